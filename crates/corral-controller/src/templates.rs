//! The controller's template library: the templates it can send to hosts that lack them.

use std::path::Path;

/// A template of the library.
#[derive(Debug, Clone)]
pub struct LibraryTemplate {
    pub name: String,
    pub size_bytes: u64,
    pub kernel_version: String,
    pub os: String,
    pub t: corral_api::template_dir::Template,
}

/// Loads the library in `dir`.
pub fn scan(dir: &Path) -> Vec<LibraryTemplate> {
    let (ok, broken) = corral_api::template_dir::scan(dir);
    for b in broken {
        tracing::warn!("library template skipped: {b}");
    }
    ok.into_iter()
        .map(|t| LibraryTemplate {
            name: t.info.name.clone(),
            size_bytes: t.info.size_bytes,
            kernel_version: t.info.kernel_version.clone(),
            os: t.info.os.clone(),
            t,
        })
        .collect()
}
