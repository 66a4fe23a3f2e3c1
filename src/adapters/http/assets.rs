//! The web page (`www/`), compiled into the binary so it is served
//! whatever the working directory is. Cargo rebuilds when a file changes.

/// One embedded file.
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

const INDEX: Asset =
    Asset { content_type: "text/html; charset=utf-8", body: include_bytes!("../../../www/index.html") };
const STYLE: Asset = Asset { content_type: "text/css; charset=utf-8", body: include_bytes!("../../../www/style.css") };
const SCRIPT: Asset =
    Asset { content_type: "application/javascript; charset=utf-8", body: include_bytes!("../../../www/app.js") };

/// Every file by the path it is served at (`/` is the page itself).
pub const FILES: &[(&str, &Asset)] =
    &[("/", &INDEX), ("/index.html", &INDEX), ("/style.css", &STYLE), ("/app.js", &SCRIPT)];

/// The file served at `path`, if any.
pub fn find(path: &str) -> Option<&'static Asset> {
    FILES.iter().find(|(p, _)| *p == path).map(|(_, asset)| *asset)
}
