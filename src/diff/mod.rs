//! Changes to and from layers: the deterministic layer tar writer, the two snapshot differs
//! (overlay upper dir, parallel walk of two trees), and applying a layer tar to a directory.

pub mod apply;
pub mod overlay;
pub mod tar;
pub mod times;
pub mod walk;

pub use self::tar::{write_entries, write_tree, EntrySource, TarEntry, TarOptions};
pub use apply::{
    apply_layer, apply_layer_mapped, chain, escape_text, escaped, ApplyError, ApplyStats,
};
pub(crate) use tar::join as join_rel;
pub use times::{Times, TimesWriter};

#[cfg(test)]
mod differ_tests;
#[cfg(test)]
mod tests;
