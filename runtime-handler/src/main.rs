//! `ferry-runc`: runc, except that a container whose pod carries a valid
//! restore grant is restored from its checkpoint (see the library).

use std::process::ExitCode;

use ferry_runc::{Config, args, diff, handler};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some(diff::CHILD_COMMAND) {
        return match diff::child(&argv[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("{err}");
                ExitCode::FAILURE
            }
        };
    }
    let call = args::parse(&argv);
    match Config::load() {
        Ok(config) => handler::run(&config, &argv, &call),
        Err(err) => {
            // Without its configuration it cannot even find runc.
            eprintln!("ferry-runc: {err}");
            ExitCode::FAILURE
        }
    }
}
