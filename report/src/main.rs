//! ferry-report: percentiles of checkpoint time, pause, replication time
//! and downtime per policy and size class (warm against cold), and two PNG
//! charts, from ferry's history database.
//!
//!   ferry-report --database-url postgresql://… --out report/

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Parser;
use ferry_report::{Error, chart, query, stats};

#[derive(Parser, Debug)]
#[command(
    name = "ferry-report",
    about = "Checkpoint cost and failover downtime from ferry's history"
)]
struct Args {
    /// The history database (the controller's `--history-database-url`).
    #[arg(long, env = "FERRY_HISTORY_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// CA of the database server's certificate (PEM), for sslmode=require.
    #[arg(long, env = "FERRY_HISTORY_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Only what happened in this many seconds before now; default: all.
    #[arg(long)]
    since_seconds: Option<u64>,
    /// Directory for the charts (checkpoint-time.png, downtime.png); none
    /// are drawn without it.
    #[arg(long)]
    out: Option<PathBuf>,
    /// TrueType font for the charts.
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
}

async fn run(args: Args) -> Result<String, Error> {
    let database = ferry_history::Database::new(&args.database_url, args.ca_file.as_deref())?;
    let client = database.connect().await?;
    let since = args.since_seconds.map_or(SystemTime::UNIX_EPOCH, |s| {
        SystemTime::now() - Duration::from_secs(s)
    });
    let checkpoints = query::checkpoints(&client, since).await?;
    let failovers = query::failovers(&client, since).await?;
    let mut report = ferry_report::tables(
        &stats::checkpoint_lines(&checkpoints),
        &stats::failover_lines(&failovers),
    );
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)
            .map_err(|e| Error::Usage(format!("creating {}: {e}", out.display())))?;
        chart::use_font(&args.font)?;
        let time = out.join("checkpoint-time.png");
        chart::checkpoint_time_by_size(&checkpoints, &time)?;
        let downtime = out.join("downtime.png");
        chart::downtime_by_kind(&stats::downtime_by_kind(&failovers), &downtime)?;
        report.push_str(&format!(
            "\nCharts: {} and {}\n",
            time.display(),
            downtime.display()
        ));
    }
    Ok(report)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(Args::parse()).await {
        Ok(report) => {
            #[allow(clippy::print_stdout)] // the report is the output
            {
                print!("{report}");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("ferry-report: {err}");
            }
            ExitCode::FAILURE
        }
    }
}
