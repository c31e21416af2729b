//! The `pipe` binary: parse the command line, set up tracing, run, print the error chain,
//! exit with the code the outcome implies.

use clap::{CommandFactory, FromArgMatches};

/// Colour for clap's own output (help, usage errors), which is printed before pipe's
/// reporter exists: `--color` on the command line, else none with NO_COLOR, TERM=dumb or CI.
fn clap_color() -> clap::ColorChoice {
    let args: Vec<String> = std::env::args().collect();
    let mut asked = None;
    for (i, a) in args.iter().enumerate() {
        if let Some(v) = a.strip_prefix("--color=") {
            asked = Some(v.to_string());
        } else if a == "--color" {
            asked = args.get(i + 1).cloned();
        }
    }
    let off = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
        || std::env::var("TERM").is_ok_and(|t| t == "dumb")
        || std::env::var_os("CI").is_some();
    match asked.as_deref() {
        Some("always") => clap::ColorChoice::Always,
        Some("never") => clap::ColorChoice::Never,
        _ if off => clap::ColorChoice::Never,
        _ => clap::ColorChoice::Auto,
    }
}

fn main() {
    let matches = pipe::cli::Cli::command().color(clap_color()).get_matches();
    let cli = pipe::cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PIPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // SPEC: no colour with CI set either (unless --color always).
    let ci = cli.color == pipe::report::ColorChoice::Auto && std::env::var_os("CI").is_some();
    let color = !ci
        && pipe::report::use_color(
            cli.color,
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        );
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .without_time()
        .init();
    let code = match pipe::run(cli) {
        Ok(code) => code,
        // A reader that closed stdout (`pipe runs | head -1`) is a normal end: no message.
        Err(err) if pipe::output::is_closed_pipe(&err) => 0,
        Err(err) => {
            let code = pipe::error::exit_code(&err);
            let mut msg = format!("{}", err);
            for cause in err.chain().skip(1) {
                msg.push_str(&format!("\n  caused by: {cause}"));
            }
            eprintln!(
                "{} {msg}",
                pipe::report::paint(color, pipe::report::Tone::Bad, "error:")
            );
            code
        }
    };
    log_cpu_used();
    std::process::exit(code);
}

/// With `PIPE_LOG=pipe::usage=debug`: the CPU time pipe used itself and what its stages
/// used, for profiling pipe's own cost per stage (the benchmark's overhead figures).
fn log_cpu_used() {
    if !tracing::enabled!(target: "pipe::usage", tracing::Level::DEBUG) {
        return;
    }
    let of = |who| {
        // SAFETY: `getrusage` fills the zeroed struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut u) };
        let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        (s(u.ru_utime), s(u.ru_stime))
    };
    let (user, sys) = of(libc::RUSAGE_SELF);
    let (c_user, c_sys) = of(libc::RUSAGE_CHILDREN);
    tracing::debug!(
        target: "pipe::usage",
        user_s = format!("{user:.3}"),
        sys_s = format!("{sys:.3}"),
        children_user_s = format!("{c_user:.3}"),
        children_sys_s = format!("{c_sys:.3}"),
        "CPU time used"
    );
}
