//! hprobe and telem-record-gen start once per record: libgcc's unwinder is linked in (see
//! `../build-support/libgcc_eh.rs`).
include!("../build-support/libgcc_eh.rs");

fn main() {
    link_libgcc_eh();
}
