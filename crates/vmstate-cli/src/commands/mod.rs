//! One module per subcommand.

pub mod element;
