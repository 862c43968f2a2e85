fn main() {
    println!("novacron: being built");
}
