fn main() {
    println!("forewarn");
}
