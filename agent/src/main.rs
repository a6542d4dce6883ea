fn main() -> std::process::ExitCode {
    credwatch::cli::main()
}
