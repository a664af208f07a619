fn main() {
    std::process::exit(perceptio::cli::main());
}
