//! The `pipe` binary: parse the command line, set up tracing, run, print the error chain,
//! exit with the code the outcome implies.

use clap::Parser;

fn main() {
    pipe::tls::install_crypto_provider();
    let cli = pipe::cli::Cli::parse();
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PIPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let color = pipe::report::use_color(
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
    std::process::exit(code);
}
