fn main() {
    std::process::exit(kiln::cli::run(std::env::args_os()));
}
