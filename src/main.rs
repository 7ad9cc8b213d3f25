//! The `tenantd` binary: everything happens in [`tenantd::cli`].

#![forbid(unsafe_code)]

fn main() {
    std::process::exit(tenantd::cli::main());
}
