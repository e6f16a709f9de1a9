//! Changes to and from layers: the deterministic layer tar writer, and applying a layer tar to a
//! directory (unpack). The snapshot differs (overlay upper dir, parallel walk) come with the builder.

pub mod apply;
pub mod tar;

pub use self::tar::{write_tree, TarOptions};
pub use apply::{apply_layer, ApplyError, ApplyStats};

#[cfg(test)]
mod tests;
