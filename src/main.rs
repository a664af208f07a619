/// The system allocator, aware of checkpoint tensors that live in a file mapping (their load
/// then neither copies nor zero-fills 4 GB; `perceptio::util::mapped`).
#[global_allocator]
static ALLOC: perceptio::util::mapped::MappedAlloc = perceptio::util::mapped::MappedAlloc;

fn main() {
    std::process::exit(perceptio::cli::main());
}
