//! The `runnel` binary: `runnel up` runs the daemon; every other command is a client of its
//! API, in three steps as in ripgrep: parse the command line, resolve where the daemon is and
//! who to be, execute. Errors end the process with one line that says what to do.

mod cli;
mod client;
mod compute;
mod credentials;
mod demo;
mod exe;
mod explain;
mod home;
mod iam;
mod node;
mod operator;
mod output;
mod proxy;
mod run;
mod troubleshoot;
mod up;

use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: the frontend allocates and frees on every request, and
/// under callgrind glibc's allocator alone was ~17% of the frontend's instructions
/// (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{CommandFactory, FromArgMatches};

use crate::cli::{Cli, Command};
use crate::client::{Client, Target};

/// The full command path (`run services add-iam-policy-binding`), for error lines.
fn command_path(matches: &clap::ArgMatches) -> String {
    let mut words = Vec::new();
    let mut m = matches;
    while let Some((name, sub)) = m.subcommand() {
        words.push(name.to_string());
        m = sub;
    }
    words.join(" ")
}

async fn execute(cli: Cli) -> anyhow::Result<()> {
    // The demo makes its own home, whatever RUNNEL_HOME says; its apps need none.
    match cli.command {
        Command::Demo(args) => return demo::demo(args).await,
        Command::DemoApp(args) => return demo::app(args).await,
        _ => {}
    }
    let home = home::resolve(cli.global.home.as_deref())?;
    if let Command::Up(args) = cli.command {
        return up::up(&home, args).await;
    }
    let client = Client::connect(Target {
        home,
        api_url: cli.global.api_url.clone(),
        credential_file: cli.global.credential_file.clone(),
        project: cli.global.project.clone(),
        region: cli.global.region.clone(),
    })?;
    let format = cli.global.format;
    match cli.command {
        Command::Up(_) | Command::Demo(_) | Command::DemoApp(_) => Ok(()),
        Command::Run(c) => run::run(&client, format, c).await,
        Command::Iam(c) => iam::iam(&client, format, c).await,
        Command::Projects(c) => iam::projects(&client, format, c).await,
        Command::Compute(c) => compute::compute(&client, format, c).await,
        Command::Auth(c) => credentials::auth(&client, format, c).await,
        Command::Troubleshoot(c) => troubleshoot::troubleshoot(&client, format, c).await,
        Command::Logs(c) => {
            let v = client.get(&format!("/runnel/v1/projects/{}/refusals?limit={}", client.project, c.limit)).await?;
            let entries = v["entries"].as_array().cloned().unwrap_or_default();
            if format != output::Format::Table {
                return output::print_list(format, &entries, &[]);
            }
            for e in entries {
                println!(
                    "{} {} {} {} target={} origin=\"{}\"",
                    output::s(&e["timestamp"]),
                    output::s(&e["requestId"]),
                    output::s(&e["stage"]),
                    output::s(&e["reason"]),
                    output::s(&e["target"]),
                    output::s(&e["origin"])
                );
            }
            Ok(())
        }
    }
}

/// `runnel … | head` closes the pipe early; Rust's `println!` then panics with a message about a
/// broken pipe. A command-line tool should end quietly instead, as with SIGPIPE's default action
/// (exit status 141 = 128 + SIGPIPE). Every other panic keeps the default report.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    // The sandbox's own stages run before anything else: entering namespaces needs a process
    // with a single thread.
    let argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        Some(runnel_runtime::sandbox::STAGE1_ARG) => {
            let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
            return runnel_runtime::sandbox::stage1_main(argv.get(2).map(String::as_str), &exe);
        }
        Some(runnel_runtime::sandbox::STAGE2_ARG) => return runnel_runtime::sandbox::stage2_main(),
        Some(runnel_runtime::sandbox::BARE_ARG) => return runnel_runtime::sandbox::bare_main(),
        _ => {}
    }
    quiet_on_closed_stdout();
    let matches = Cli::command().get_matches();
    let name = command_path(&matches);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // The demo sends the daemon's log to a file of its own (stderr with `-v`).
    if !matches!(cli.command, Command::Demo(_)) {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("RUNNEL_LOG").unwrap_or_else(|_| "info".into()),
            )
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ERROR: (runnel {name}) cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ERROR: (runnel {name}) {e}");
            ExitCode::FAILURE
        }
    }
}
