//! (filled by a later issue)

pub fn main(_args: &[String]) -> Result<(), String> {
    Err("not built yet: see the open issues".into())
}
