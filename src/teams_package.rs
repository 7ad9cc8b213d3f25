//! Teams app packages for bot provisioning (seed 004, issue #20 step 4): the manifest generated
//! at the current GA schema, icons generated at the sizes Teams requires, a given package
//! checked by the same rules, and the zip the Developer Portal's import takes.
//!
//! Owns no tables. Invariants: every package this module builds passes [`validate`]; `validate`
//! applies the rules of Microsoft's published manifest schema
//! (microsoft/json-schemas `teams/v1.30/MicrosoftTeams.schema.json`: required properties,
//! lengths, patterns, enums) and the icon rules of its descriptions (color 192×192, outline
//! 32×32, transparent, white), and names the property and the fix when one fails.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};

use serde_json::{json, Value};

/// The manifest schema generated packages use: the newest GA version
/// (microsoft/json-schemas, "Add Teams App Manifest v1.30 GA schema", 2026-08).
pub const MANIFEST_VERSION: &str = "1.30";

/// File names of the generated icons.
const COLOR_ICON: &str = "color.png";
const OUTLINE_ICON: &str = "outline.png";

/// Why a package cannot be built or is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    /// Not a readable zip archive.
    #[error("the app package is not a readable zip archive: {0}")]
    NotZip(String),
    /// The manifest breaks a schema rule: the property and what it must be.
    #[error("{}", manifest_message(property, rule))]
    Manifest {
        /// JSON path of the property, e.g. `name.short`.
        property: String,
        /// What it must be.
        rule: String,
    },
    /// An icon is missing or not what Teams takes.
    #[error("icon `{file}`: {rule}")]
    Icon {
        /// The file named by the manifest.
        file: String,
        /// What it must be.
        rule: String,
    },
}

impl PackageError {
    /// Stable reason code.
    pub fn reason_code(&self) -> &'static str {
        match self {
            PackageError::NotZip(_) => "package_not_zip",
            PackageError::Manifest { .. } => "manifest_invalid",
            PackageError::Icon { .. } => "icon_invalid",
        }
    }
}

fn manifest_message(property: &str, rule: &str) -> String {
    if property.is_empty() {
        format!("manifest.json {rule}")
    } else {
        format!("manifest.json: `{property}` {rule}")
    }
}

fn manifest_error(property: &str, rule: impl Into<String>) -> PackageError {
    PackageError::Manifest {
        property: property.to_string(),
        rule: rule.into(),
    }
}

/// What a generated bot app is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotApp {
    /// The app registration's client id: the manifest's `id` and the bot's `botId`.
    pub app_id: String,
    /// Display name (`name.short`, at most 30 characters).
    pub name: String,
    /// `description.short` (at most 80 characters); the full description repeats it unless
    /// `description_full` is given.
    pub description: String,
    /// `description.full` (at most 4,000 characters).
    pub description_full: Option<String>,
    /// `developer.name` (at most 32 characters).
    pub developer_name: String,
    /// `developer.websiteUrl`, `privacyUrl` and `termsOfUseUrl` (https).
    pub developer_url: String,
    /// `accentColor`, `#rrggbb`; also the color icon's background.
    pub accent_color: String,
    /// Bot scopes: `personal`, `team`, `groupChat`, `copilot`.
    pub scopes: Vec<String>,
}

/// The manifest for `app` at [`MANIFEST_VERSION`].
pub fn manifest(app: &BotApp) -> Value {
    let url = app.developer_url.trim_end_matches('/');
    json!({
        "$schema": format!("https://developer.microsoft.com/json-schemas/teams/v{MANIFEST_VERSION}/MicrosoftTeams.schema.json"),
        "manifestVersion": MANIFEST_VERSION,
        "version": "1.0.0",
        "id": app.app_id,
        "developer": {
            "name": app.developer_name,
            "websiteUrl": format!("{url}/"),
            "privacyUrl": format!("{url}/privacy"),
            "termsOfUseUrl": format!("{url}/terms"),
        },
        "name": { "short": app.name, "full": app.name },
        "description": {
            "short": app.description,
            "full": app.description_full.as_deref().unwrap_or(&app.description),
        },
        "icons": { "color": COLOR_ICON, "outline": OUTLINE_ICON },
        "accentColor": app.accent_color,
        "bots": [{
            "botId": app.app_id,
            "scopes": app.scopes,
            "supportsFiles": false,
            "isNotificationOnly": false,
        }],
        "permissions": ["identity", "messageTeamMembers"],
        "validDomains": [],
    })
}

/// The package for `app`: its manifest and generated icons, zipped, after the same checks as
/// a given package.
///
/// # Errors
/// [`PackageError`] when `app` breaks a manifest rule (a name too long, a bad color, …).
pub fn build(app: &BotApp) -> Result<Vec<u8>, PackageError> {
    let accent = parse_hex_color(&app.accent_color)
        .ok_or_else(|| manifest_error("accentColor", "must be `#` and six hex digits"))?;
    let manifest = serde_json::to_vec_pretty(&manifest(app)).expect("a manifest serializes");
    let files = BTreeMap::from([
        ("manifest.json".to_string(), manifest),
        (COLOR_ICON.to_string(), color_icon(accent)),
        (OUTLINE_ICON.to_string(), outline_icon()),
    ]);
    validate(&files)?;
    zip(&files)
}

/// A given package made the bot's: its manifest's `id` and its bot's `botId` set to `app_id`
/// (a bot is added, in the personal scope, when the manifest has none), then checked and
/// zipped again. The operator's package cannot know the app id, which step 3 makes.
///
/// # Errors
/// [`PackageError`] naming the first rule the result breaks.
pub fn rebind(package: &[u8], app_id: &str) -> Result<Vec<u8>, PackageError> {
    let mut files = unzip(package)?;
    let mut manifest: Value = files
        .get("manifest.json")
        .and_then(|bytes| serde_json::from_slice(bytes).ok())
        .ok_or_else(|| manifest_error("", "is missing at the package's root, or not JSON"))?;
    manifest["id"] = json!(app_id);
    match manifest.get_mut("bots").and_then(Value::as_array_mut) {
        Some(bots) if !bots.is_empty() => {
            for bot in bots {
                bot["botId"] = json!(app_id);
            }
        }
        _ => manifest["bots"] = json!([{ "botId": app_id, "scopes": ["personal"] }]),
    }
    files.insert(
        "manifest.json".into(),
        serde_json::to_vec_pretty(&manifest).expect("a manifest serializes"),
    );
    validate(&files)?;
    zip(&files)
}

/// Reads a given package and checks it; returns its files.
///
/// # Errors
/// [`PackageError`] naming the first rule it breaks.
pub fn read_and_validate(package: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, PackageError> {
    let files = unzip(package)?;
    validate(&files)?;
    Ok(files)
}

/// Checks a package's files against the manifest schema's rules and the icon rules; returns
/// the manifest.
///
/// # Errors
/// [`PackageError`] naming the first rule broken and what the property must be.
pub fn validate(files: &BTreeMap<String, Vec<u8>>) -> Result<Value, PackageError> {
    let manifest: Value = files
        .get("manifest.json")
        .ok_or_else(|| {
            manifest_error(
                "",
                "is missing: the package needs manifest.json at its root",
            )
        })
        .and_then(|bytes| {
            serde_json::from_slice(bytes).map_err(|_| manifest_error("", "is not valid JSON"))
        })?;
    if !manifest.is_object() {
        return Err(manifest_error("", "must be a JSON object"));
    }
    for property in [
        "manifestVersion",
        "version",
        "id",
        "developer",
        "name",
        "description",
        "icons",
        "accentColor",
    ] {
        if manifest.get(property).is_none() {
            return Err(manifest_error(property, "is required"));
        }
    }
    let version = text(&manifest, &["manifestVersion"], 16)?;
    if !is_known_manifest_version(version) {
        return Err(manifest_error(
            "manifestVersion",
            format!("must be a published schema version (1.0 to {MANIFEST_VERSION}, or devPreview); found {version:?}"),
        ));
    }
    if !is_semver(text(&manifest, &["version"], 256)?) {
        return Err(manifest_error(
            "version",
            "must be MAJOR.MINOR.PATCH, e.g. 1.0.0",
        ));
    }
    if !is_guid(text(&manifest, &["id"], 36)?) {
        return Err(manifest_error(
            "id",
            "must be a GUID (the app registration's client id)",
        ));
    }
    text(&manifest, &["developer", "name"], 32)?;
    for url in ["websiteUrl", "privacyUrl", "termsOfUseUrl"] {
        let value = text(&manifest, &["developer", url], 2048)?;
        if !value.to_ascii_lowercase().starts_with("https://")
            && !value.to_ascii_lowercase().starts_with("http://")
        {
            return Err(manifest_error(
                &format!("developer.{url}"),
                "must be an http(s) URL",
            ));
        }
    }
    if text(&manifest, &["name", "short"], 30)?.trim().is_empty() {
        return Err(manifest_error("name.short", "must not be empty"));
    }
    optional_text(&manifest, &["name", "full"], 100)?;
    text(&manifest, &["description", "short"], 80)?;
    text(&manifest, &["description", "full"], 4000)?;
    if parse_hex_color(text(&manifest, &["accentColor"], 7)?).is_none() {
        return Err(manifest_error(
            "accentColor",
            "must be `#` and six hex digits, e.g. #4464ee",
        ));
    }
    validate_bots(&manifest)?;
    for (key, size) in [("color", 192), ("outline", 32)] {
        let file = text(&manifest, &["icons", key], 2048)?;
        let image = files.get(file).ok_or_else(|| PackageError::Icon {
            file: file.to_string(),
            rule: format!("is named by icons.{key} but is not in the package"),
        })?;
        check_icon(file, image, size, key == "outline")?;
    }
    Ok(manifest)
}

fn validate_bots(manifest: &Value) -> Result<(), PackageError> {
    let Some(bots) = manifest.get("bots") else {
        return Ok(());
    };
    let bots = bots
        .as_array()
        .ok_or_else(|| manifest_error("bots", "must be an array"))?;
    if bots.len() > 1 {
        return Err(manifest_error("bots", "may hold one bot at most"));
    }
    for bot in bots {
        let id = bot.get("botId").and_then(Value::as_str).unwrap_or_default();
        if !is_guid(id) {
            return Err(manifest_error(
                "bots[0].botId",
                "must be a GUID (the bot's app id)",
            ));
        }
        let scopes = bot
            .get("scopes")
            .and_then(Value::as_array)
            .ok_or_else(|| manifest_error("bots[0].scopes", "is required"))?;
        if scopes.is_empty() || scopes.len() > 4 {
            return Err(manifest_error("bots[0].scopes", "must name 1 to 4 scopes"));
        }
        for scope in scopes {
            if !matches!(
                scope.as_str(),
                Some("team" | "personal" | "groupChat" | "copilot")
            ) {
                return Err(manifest_error(
                    "bots[0].scopes",
                    "may only hold team, personal, groupChat and copilot",
                ));
            }
        }
    }
    Ok(())
}

/// The string at `path`, at most `max` characters.
fn text<'v>(manifest: &'v Value, path: &[&str], max: usize) -> Result<&'v str, PackageError> {
    optional_text(manifest, path, max)?
        .ok_or_else(|| manifest_error(&path.join("."), "is required"))
}

fn optional_text<'v>(
    manifest: &'v Value,
    path: &[&str],
    max: usize,
) -> Result<Option<&'v str>, PackageError> {
    let mut at = manifest;
    for key in path {
        match at.get(key) {
            Some(next) => at = next,
            None => return Ok(None),
        }
    }
    let value = at
        .as_str()
        .ok_or_else(|| manifest_error(&path.join("."), "must be a string"))?;
    if value.chars().count() > max {
        return Err(manifest_error(
            &path.join("."),
            format!(
                "must be at most {max} characters (it has {})",
                value.chars().count()
            ),
        ));
    }
    Ok(Some(value))
}

fn is_known_manifest_version(version: &str) -> bool {
    if version == "devPreview" {
        return true;
    }
    let latest_minor: u32 = MANIFEST_VERSION
        .strip_prefix("1.")
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    version
        .strip_prefix("1.")
        .and_then(|minor| minor.parse::<u32>().ok())
        .is_some_and(|minor| minor <= latest_minor && minor != 18)
}

/// The schema's `semver` definition: three numbers without leading zeros.
fn is_semver(version: &str) -> bool {
    let parts: Vec<&str> = version.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_digit())
                && (part.len() == 1 || !part.starts_with('0'))
        })
}

/// The schema's `guid` definition: 8-4-4-4-12 hex digits.
fn is_guid(value: &str) -> bool {
    let groups: Vec<&str> = value.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn parse_hex_color(value: &str) -> Option<[u8; 3]> {
    let hex = value.strip_prefix('#')?;
    if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let channel = |at: usize| u8::from_str_radix(&hex[at..at + 2], 16).ok();
    Some([channel(0)?, channel(2)?, channel(4)?])
}

/// An icon: a PNG of `size`×`size`; an outline icon also transparent where it is not white
/// (the schema: "a transparent PNG outline icon. The border color needs to be white").
fn check_icon(file: &str, bytes: &[u8], size: u32, outline: bool) -> Result<(), PackageError> {
    let icon_error = |rule: String| PackageError::Icon {
        file: file.to_string(),
        rule,
    };
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .map_err(|_| icon_error("must be a PNG image".into()))?;
    let (width, height) = reader.info().size();
    if (width, height) != (size, size) {
        return Err(icon_error(format!(
            "must be {size}×{size} pixels (it is {width}×{height})"
        )));
    }
    if !outline {
        return Ok(());
    }
    let mut pixels = vec![0; reader.output_buffer_size().unwrap_or(0)];
    let frame = reader
        .next_frame(&mut pixels)
        .map_err(|_| icon_error("must be a readable PNG image".into()))?;
    if frame.color_type != png::ColorType::Rgba
        && frame.color_type != png::ColorType::GrayscaleAlpha
    {
        return Err(icon_error(
            "must have a transparent background (a PNG with an alpha channel)".into(),
        ));
    }
    let channels = frame.color_type.samples();
    let pixels = &pixels[..frame.buffer_size()];
    let mut transparent = false;
    for pixel in pixels.chunks_exact(channels) {
        let (color, alpha) = pixel.split_at(channels - 1);
        if alpha[0] == 0 {
            transparent = true;
        } else if color.iter().any(|&c| c != 255) {
            return Err(icon_error(
                "must be white on a transparent background (it has colored pixels)".into(),
            ));
        }
    }
    if !transparent {
        return Err(icon_error("must have a transparent background".into()));
    }
    Ok(())
}

/// The 192×192 color icon: the accent color with a white rounded square in the middle.
fn color_icon(accent: [u8; 3]) -> Vec<u8> {
    const SIZE: u32 = 192;
    let mut pixels = Vec::with_capacity((SIZE * SIZE * 3) as usize);
    for y in 0..SIZE {
        for x in 0..SIZE {
            let inside = (56..136).contains(&x) && (56..136).contains(&y);
            let corner = !(64..128).contains(&x) && !(64..128).contains(&y);
            if inside && !corner {
                pixels.extend_from_slice(&[255, 255, 255]);
            } else {
                pixels.extend_from_slice(&accent);
            }
        }
    }
    encode_png(SIZE, png::ColorType::Rgb, &pixels)
}

/// The 32×32 outline icon: a white square ring on transparency.
fn outline_icon() -> Vec<u8> {
    const SIZE: u32 = 32;
    let mut pixels = Vec::with_capacity((SIZE * SIZE * 4) as usize);
    for y in 0..SIZE {
        for x in 0..SIZE {
            let ring = (6..26).contains(&x)
                && (6..26).contains(&y)
                && !((9..23).contains(&x) && (9..23).contains(&y));
            if ring {
                pixels.extend_from_slice(&[255, 255, 255, 255]);
            } else {
                pixels.extend_from_slice(&[0, 0, 0, 0]);
            }
        }
    }
    encode_png(SIZE, png::ColorType::Rgba, &pixels)
}

fn encode_png(size: u32, color: png::ColorType, pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, size, size);
        encoder.set_color(color);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("writing to memory");
        writer
            .write_image_data(pixels)
            .expect("pixels match the header");
    }
    out
}

fn zip(files: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>, PackageError> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in files {
        writer
            .start_file(name.as_str(), options)
            .and_then(|()| writer.write_all(bytes).map_err(zip::result::ZipError::Io))
            .map_err(|err| PackageError::NotZip(err.to_string()))?;
    }
    writer
        .finish()
        .map(Cursor::into_inner)
        .map_err(|err| PackageError::NotZip(err.to_string()))
}

/// Largest file read out of a given package (Teams packages hold a manifest and two icons).
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

fn unzip(package: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, PackageError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(package))
        .map_err(|err| PackageError::NotZip(err.to_string()))?;
    let mut files = BTreeMap::new();
    for n in 0..archive.len() {
        let file = archive
            .by_index(n)
            .map_err(|err| PackageError::NotZip(err.to_string()))?;
        if file.is_dir() {
            continue;
        }
        let name = file
            .name()
            .map_err(|err| PackageError::NotZip(err.to_string()))?
            .into_owned();
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|err| PackageError::NotZip(err.to_string()))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(PackageError::NotZip(format!(
                "`{name}` is larger than 4 MiB"
            )));
        }
        files.insert(name, bytes);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change that breaks one rule of the manifest.
    type Breaks = fn(&mut Value);

    fn app() -> BotApp {
        BotApp {
            app_id: "2a7f3c4e-1b5d-4e6f-8a9b-0c1d2e3f4a5b".into(),
            name: "Contoso Helper".into(),
            description: "Answers questions about Contoso.".into(),
            description_full: None,
            developer_name: "Contoso".into(),
            developer_url: "https://contoso.example".into(),
            accent_color: "#4464ee".into(),
            scopes: vec!["personal".into(), "team".into(), "groupChat".into()],
        }
    }

    fn files_of(app: &BotApp) -> BTreeMap<String, Vec<u8>> {
        read_and_validate(&build(app).expect("builds")).expect("valid")
    }

    fn with_manifest(
        files: &BTreeMap<String, Vec<u8>>,
        change: impl FnOnce(&mut Value),
    ) -> BTreeMap<String, Vec<u8>> {
        let mut manifest: Value = serde_json::from_slice(&files["manifest.json"]).expect("json");
        change(&mut manifest);
        let mut files = files.clone();
        files.insert(
            "manifest.json".into(),
            serde_json::to_vec(&manifest).expect("json"),
        );
        files
    }

    #[test]
    fn a_built_package_is_a_zip_of_a_current_manifest_and_icons_of_the_required_sizes() {
        let files = files_of(&app());
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            ["color.png", "manifest.json", "outline.png"]
        );
        let manifest = validate(&files).expect("valid");
        assert_eq!(manifest["manifestVersion"], MANIFEST_VERSION);
        assert_eq!(manifest["id"], app().app_id);
        assert_eq!(manifest["bots"][0]["botId"], app().app_id);
        let size = |name: &str| {
            let decoder = png::Decoder::new(Cursor::new(files[name].clone()));
            decoder.read_info().expect("png").info().size()
        };
        assert_eq!(size("color.png"), (192, 192));
        assert_eq!(size("outline.png"), (32, 32));
    }

    #[test]
    fn the_schema_rules_refuse_what_teams_refuses_and_name_the_property() {
        let files = files_of(&app());
        let cases: Vec<(&str, Breaks)> = vec![
            ("name.short", |m| m["name"]["short"] = json!("x".repeat(31))),
            ("description.short", |m| {
                m["description"]["short"] = json!("x".repeat(81))
            }),
            ("description.full", |m| {
                m["description"]["full"] = json!("x".repeat(4001))
            }),
            ("developer.name", |m| {
                m["developer"]["name"] = json!("x".repeat(33))
            }),
            ("developer.privacyUrl", |m| {
                m["developer"]["privacyUrl"] = json!("ftp://x")
            }),
            ("id", |m| m["id"] = json!("contoso-bot")),
            ("version", |m| m["version"] = json!("1.0")),
            ("version", |m| m["version"] = json!("01.0.0")),
            ("manifestVersion", |m| m["manifestVersion"] = json!("1.18")),
            ("manifestVersion", |m| m["manifestVersion"] = json!("1.99")),
            ("accentColor", |m| m["accentColor"] = json!("blue")),
            ("accentColor", |m| {
                m.as_object_mut().expect("object").remove("accentColor");
            }),
            ("bots[0].botId", |m| {
                m["bots"][0]["botId"] = json!("not-a-guid")
            }),
            ("bots[0].scopes", |m| {
                m["bots"][0]["scopes"] = json!(["channel"])
            }),
            ("bots[0].scopes", |m| m["bots"][0]["scopes"] = json!([])),
            ("bots", |m| {
                m["bots"] = json!([m["bots"][0].clone(), m["bots"][0].clone()])
            }),
        ];
        for (property, change) in cases {
            let broken = with_manifest(&files, change);
            match validate(&broken) {
                Err(PackageError::Manifest {
                    property: named,
                    rule,
                }) => {
                    assert_eq!(named, property, "{rule}");
                }
                other => panic!("{property}: {other:?}"),
            }
        }
    }

    #[test]
    fn icons_must_have_the_sizes_and_the_outline_must_be_white_on_transparency() {
        let files = files_of(&app());
        let mut swapped = files.clone();
        swapped.insert("outline.png".into(), files["color.png"].clone());
        assert!(matches!(
            validate(&swapped),
            Err(PackageError::Icon { rule, .. }) if rule.contains("32×32")
        ));
        let mut opaque = files.clone();
        opaque.insert(
            "outline.png".into(),
            encode_png(32, png::ColorType::Rgb, &[255; 32 * 32 * 3]),
        );
        assert!(matches!(
            validate(&opaque),
            Err(PackageError::Icon { rule, .. }) if rule.contains("transparent")
        ));
        let mut colored = files.clone();
        let mut pixels = [0_u8; 32 * 32 * 4];
        pixels[..4].copy_from_slice(&[200, 30, 30, 255]);
        colored.insert(
            "outline.png".into(),
            encode_png(32, png::ColorType::Rgba, &pixels),
        );
        assert!(matches!(
            validate(&colored),
            Err(PackageError::Icon { rule, .. }) if rule.contains("white")
        ));
        let mut missing = files;
        missing.remove("color.png");
        assert!(matches!(validate(&missing), Err(PackageError::Icon { .. })));
    }

    #[test]
    fn a_given_package_is_made_the_bots_and_still_checked() {
        let given = build(&app()).expect("builds");
        let app_id = "9b8a7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
        let bound = read_and_validate(&rebind(&given, app_id).expect("rebinds")).expect("valid");
        let manifest: Value = serde_json::from_slice(&bound["manifest.json"]).expect("json");
        assert_eq!(manifest["id"], app_id);
        assert_eq!(manifest["bots"][0]["botId"], app_id);
        // Without bots, one is added.
        let botless = zip(&with_manifest(&files_of(&app()), |m| {
            m.as_object_mut().expect("object").remove("bots");
        }))
        .expect("zips");
        let bound = unzip(&rebind(&botless, app_id).expect("rebinds")).expect("zip");
        let manifest: Value = serde_json::from_slice(&bound["manifest.json"]).expect("json");
        assert_eq!(manifest["bots"][0]["botId"], app_id);
        assert_eq!(manifest["bots"][0]["scopes"], json!(["personal"]));
        // A broken rule stays broken.
        let files = with_manifest(&files_of(&app()), |m| {
            m["name"]["short"] = json!("x".repeat(31));
        });
        let broken = zip(&files).expect("zips");
        assert!(matches!(
            rebind(&broken, app_id),
            Err(PackageError::Manifest { property, .. }) if property == "name.short"
        ));
    }

    #[test]
    fn a_name_too_long_for_teams_is_refused_before_anything_is_zipped() {
        let mut long = app();
        long.name = "A bot whose name is longer than thirty characters".into();
        assert!(matches!(
            build(&long),
            Err(PackageError::Manifest { property, .. }) if property == "name.short"
        ));
        let mut bad_color = app();
        bad_color.accent_color = "#12345".into();
        assert!(build(&bad_color).is_err());
        assert!(matches!(
            read_and_validate(b"not a zip"),
            Err(PackageError::NotZip(_))
        ));
    }
}
