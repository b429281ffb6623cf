//! One module per subcommand.

pub mod check;
pub mod compat;
pub mod convert;
pub mod devices;
pub mod dump;
pub mod edit;
pub mod element;
pub mod memory;
pub mod ram;
pub mod schema;
