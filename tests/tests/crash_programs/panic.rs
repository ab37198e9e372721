// A Rust panic with panic = "abort".
#[inline(never)]
fn parse_config(input: &str) -> u32 {
    input.parse::<u32>().expect("config value must be a number")
}
fn main() {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "not a number".to_string());
    std::process::exit(parse_config(&arg) as i32);
}
