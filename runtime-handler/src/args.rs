//! runc's command line as containerd's runc shim (and CRI-O's conmon)
//! builds it: global flags, a command, the command's flags and the
//! container id last.
//!
//! ```text
//! runc --root R --log L --log-format json [--systemd-cgroup] \
//!      create --bundle B --pid-file P [--console-socket S] [--no-pivot] [--no-new-keyring] ID
//! runc --root R --log L --log-format json start ID
//! ```

use std::path::PathBuf;

/// Global flags that take a value (`--flag value` or `--flag=value`).
const GLOBALS_WITH_VALUE: &[&str] = &["--root", "--log", "--log-format", "--criu", "--rootless"];
/// `create` flags that take a value.
const CREATE_WITH_VALUE: &[&str] = &[
    "--bundle",
    "-b",
    "--pid-file",
    "--console-socket",
    "--pidfd-socket",
    "--preserve-fds",
];

/// One invocation, split where runc splits it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// Everything before the command, unchanged.
    pub globals: Vec<String>,
    pub command: Option<String>,
    /// Everything after the command, unchanged.
    pub args: Vec<String>,
}

/// What a `create` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Create {
    pub bundle: PathBuf,
    pub pid_file: Option<String>,
    pub console_socket: Option<String>,
    pub no_pivot: bool,
    pub id: String,
}

/// The value of `name` in `args` (`--name value` or `--name=value`).
fn value_of<'a>(args: &'a [String], names: &[&str]) -> Option<&'a str> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        for name in names {
            if arg == name {
                return iter.next().map(String::as_str);
            }
            if let Some(value) = arg.strip_prefix(name).and_then(|v| v.strip_prefix('=')) {
                return Some(value);
            }
        }
    }
    None
}

/// Whether `arg` is a flag whose value is the next argument.
fn takes_value(arg: &str, with_value: &[&str]) -> bool {
    with_value.contains(&arg)
}

pub fn parse(argv: &[String]) -> Invocation {
    let mut globals = Vec::new();
    let mut rest = argv.iter();
    while let Some(arg) = rest.next() {
        if !arg.starts_with('-') {
            return Invocation {
                globals,
                command: Some(arg.clone()),
                args: rest.cloned().collect(),
            };
        }
        globals.push(arg.clone());
        if takes_value(arg, GLOBALS_WITH_VALUE)
            && let Some(value) = rest.next()
        {
            globals.push(value.clone());
        }
    }
    Invocation {
        globals,
        command: None,
        args: Vec::new(),
    }
}

impl Invocation {
    /// runc's log file, where the shim looks for the reason of a failure.
    pub fn log_file(&self) -> Option<&str> {
        value_of(&self.globals, &["--log"])
    }

    /// The last positional argument: the container id of `create`,
    /// `start`, `state`, `delete` and the like.
    pub fn container_id(&self, with_value: &[&str]) -> Option<&str> {
        let mut id = None;
        let mut iter = self.args.iter();
        while let Some(arg) = iter.next() {
            if arg.starts_with('-') {
                if takes_value(arg, with_value) {
                    iter.next();
                }
            } else {
                id = Some(arg.as_str());
            }
        }
        id
    }

    /// The `create` this is, if it is one.
    pub fn create(&self) -> Option<Create> {
        if self.command.as_deref() != Some("create") {
            return None;
        }
        Some(Create {
            // runc's default bundle is the working directory.
            bundle: PathBuf::from(value_of(&self.args, &["--bundle", "-b"]).unwrap_or(".")),
            pid_file: value_of(&self.args, &["--pid-file"]).map(str::to_owned),
            console_socket: value_of(&self.args, &["--console-socket"]).map(str::to_owned),
            no_pivot: self.args.iter().any(|a| a == "--no-pivot"),
            id: self.container_id(CREATE_WITH_VALUE)?.to_owned(),
        })
    }

    /// The `start` container id, if this is a start.
    pub fn start(&self) -> Option<&str> {
        if self.command.as_deref() != Some("start") {
            return None;
        }
        self.container_id(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn the_shims_create_splits_into_globals_command_and_flags() {
        let call = parse(&argv(
            "--root /run/containerd/runc/k8s.io --log /b/log.json --log-format json --systemd-cgroup \
             create --bundle /b --pid-file /b/init.pid --no-pivot abc123",
        ));
        assert_eq!(call.command.as_deref(), Some("create"));
        assert_eq!(call.log_file(), Some("/b/log.json"));
        assert_eq!(call.globals.len(), 7);
        assert_eq!(
            call.create(),
            Some(Create {
                bundle: "/b".into(),
                pid_file: Some("/b/init.pid".into()),
                console_socket: None,
                no_pivot: true,
                id: "abc123".into(),
            })
        );
        assert_eq!(call.start(), None);
    }

    #[test]
    fn equals_forms_and_a_console_socket_are_understood() {
        let call = parse(&argv(
            "--root=/r --log=/l create -b /b --console-socket /s --preserve-fds 2 id-1",
        ));
        assert_eq!(call.log_file(), Some("/l"));
        let create = call.create().unwrap();
        assert_eq!(create.bundle, PathBuf::from("/b"));
        assert_eq!(create.console_socket.as_deref(), Some("/s"));
        assert_eq!(create.id, "id-1");
    }

    #[test]
    fn start_and_other_commands() {
        let call = parse(&argv("--root /r --log /l --log-format json start abc"));
        assert_eq!(call.start(), Some("abc"));
        assert_eq!(call.create(), None);
        let call = parse(&argv("--root /r delete --force abc"));
        assert_eq!(call.command.as_deref(), Some("delete"));
        assert_eq!(call.args, argv("--force abc"));
        assert_eq!(parse(&argv("--version")).command, None);
    }

    #[test]
    fn a_create_without_an_id_is_not_a_create_to_act_on() {
        assert_eq!(parse(&argv("create --bundle /b")).create(), None);
    }
}
