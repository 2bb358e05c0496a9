fn main() -> std::process::ExitCode {
    centinela::cli::main()
}
