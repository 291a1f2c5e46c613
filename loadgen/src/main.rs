fn main() {
    eprintln!("yellowstone-loadgen: not yet wired");
    std::process::exit(2);
}
