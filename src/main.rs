use std::process::ExitCode;

fn main() -> ExitCode {
    dino_stream::cli::main()
}
