fn main() {
    eprintln!("yellowstone-router: not yet wired");
    std::process::exit(2);
}
