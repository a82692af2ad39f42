//! Reading the npm layout (Fluent WebP + emoji.json + emojilib), the fixture layout, and the
//! sprite cache.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use image::RgbaImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use tessera_engine::{Error, Result};

use super::resample::{premultiply, resize_premultiplied, unpremultiply};
use super::{CONCEPTS, Emoji, LoadOptions, concept_of_emoji};

/// File name of the fixture's labels.
pub const FIXTURE_LABELS: &str = "labels.json";
const FLUENT_ASSETS: &str = "fluent-emoji-3d/package/assets";
const EMOJI_JSON: &str = "emoji-datasource-google/package/emoji.json";
const EMOJILIB_JSON: &str = "emojilib/package/dist/emoji-en-US.json";
const CACHE_MAGIC: &[u8; 8] = b"TSPRITE1";

/// Normalises a code-point sequence as the join in dataset.md: lower-case, `_` → `-`, drop
/// `fe0f`, strip leading zeros of each code point.
pub fn norm_key(s: &str) -> String {
    s.to_ascii_lowercase()
        .replace('_', "-")
        .split('-')
        .filter(|c| !c.is_empty() && *c != "fe0f")
        .map(|c| {
            let t = c.trim_start_matches('0');
            if t.is_empty() { "0" } else { t }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Turns emojilib's first keyword (the CLDR short name with punctuation folded into `_`) back
/// into words: `woman_s_hat` → "womans hat", `e_mail` → "e-mail", `one_o_clock` →
/// "one o'clock". `None` for truncated names (`keycap_` of # and *).
fn clean_cldr_name(raw: &str) -> Option<String> {
    if raw.ends_with('_') || raw.trim().is_empty() {
        return None;
    }
    let lower = raw.to_lowercase().replace([':', ','], "");
    let mut words: Vec<String> = Vec::new();
    let tokens: Vec<&str> = lower.split(['_', ' ']).filter(|t| !t.is_empty()).collect();
    for (i, t) in tokens.iter().enumerate() {
        match (*t, words.last_mut()) {
            ("s", Some(prev)) => prev.push('s'),
            ("clock", Some(prev)) if prev == "o" => prev.push_str("'clock"),
            _ => words.push((*t).to_string()),
        }
        // A leading single letter that is not a label ("a button") is a prefix: e-mail, t-rex.
        if i == 1 && words.len() == 2 && words[0].len() == 1 && words[0] != "a" && *t != "button" {
            let second = words.pop().unwrap_or_default();
            words[0] = format!("{}-{second}", words[0]);
        }
    }
    (!words.is_empty()).then(|| words.join(" "))
}

/// The emoji character(s) of a code-point sequence like `1F436` or `0023-FE0F-20E3`.
fn chars_of(unified: &str) -> Option<String> {
    unified
        .split('-')
        .map(|c| u32::from_str_radix(c, 16).ok().and_then(char::from_u32))
        .collect()
}

#[derive(Deserialize)]
struct DatasourceEntry {
    name: Option<String>,
    unified: String,
    non_qualified: Option<String>,
    #[serde(default)]
    short_names: Vec<String>,
    category: String,
    subcategory: String,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::bad_file(
                path,
                "not found; run `scripts/fetch-data.sh` to fetch the emoji data",
            )
        } else {
            Error::io(path, e)
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| Error::bad_file(path, e))
}

/// Labels of one emoji before its sprite is attached.
struct Labels {
    class: usize,
    cldr_name: String,
    unicode_name: String,
    short_names: Vec<String>,
    group: String,
    subcategory: String,
    keywords: Vec<String>,
}

impl Labels {
    fn into_emoji(self, id: String, sprite: RgbaImage) -> Emoji {
        Emoji {
            id,
            class: self.class,
            name: CONCEPTS[self.class].name.to_string(),
            cldr_name: self.cldr_name,
            unicode_name: self.unicode_name,
            short_names: self.short_names,
            group: self.group,
            subcategory: self.subcategory,
            keywords: self.keywords,
            sprite,
        }
    }
}

/// Joins emoji.json and emojilib into labels keyed by normalised id (the vocabulary's emoji
/// only).
fn join_labels(dir: &Path) -> Result<HashMap<String, Labels>> {
    let entries: Vec<DatasourceEntry> = read_json(&dir.join(EMOJI_JSON))?;
    let lib: HashMap<String, Vec<String>> = read_json(&dir.join(EMOJILIB_JSON))?;
    let mut out = HashMap::new();
    for e in entries {
        let id = norm_key(&e.unified);
        let Some(class) = concept_of_emoji(&id) else {
            continue;
        };
        let kw = [Some(e.unified.as_str()), e.non_qualified.as_deref()]
            .into_iter()
            .flatten()
            .filter_map(chars_of)
            .find_map(|c| lib.get(&c).or_else(|| lib.get(&c.replace('\u{fe0f}', ""))));
        let unicode_name = e.name.clone().unwrap_or_default().to_lowercase();
        // emojilib's first keyword is the CLDR short name (`grinning_squinting_face`).
        let cldr_name = kw
            .and_then(|k| k.first())
            .and_then(|s| clean_cldr_name(s))
            .unwrap_or_else(|| unicode_name.replace([':', ','], ""));
        let mut keywords: Vec<String> = Vec::new();
        for k in kw.into_iter().flatten().skip(1) {
            let k = k.replace('_', " ").to_lowercase();
            if k != cldr_name && !keywords.contains(&k) {
                keywords.push(k);
            }
        }
        out.insert(
            id,
            Labels {
                class,
                cldr_name,
                unicode_name,
                short_names: e.short_names,
                group: e.category,
                subcategory: e.subcategory,
                keywords,
            },
        );
    }
    Ok(out)
}

/// Decodes a 256² WebP (or any format `image` reads) into a premultiplied sprite of `size`².
fn decode_sprite(path: &Path, size: u32) -> Result<RgbaImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut img = image::load_from_memory(&bytes)
        .map_err(|e| Error::bad_file(path, e))?
        .to_rgba8();
    premultiply(&mut img);
    Ok(resize_premultiplied(&img, size, size))
}

/// Loads the npm layout: joins labels, decodes (or reads from the cache) the sprites.
pub fn load_npm(dir: &Path, opts: &LoadOptions) -> Result<Vec<Emoji>> {
    let labels = join_labels(dir)?;
    let assets = dir.join(FLUENT_ASSETS);
    let rd = std::fs::read_dir(&assets).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::bad_file(
                &assets,
                "not found; run `scripts/fetch-data.sh` to fetch the emoji data",
            )
        } else {
            Error::io(&assets, e)
        }
    })?;
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in rd {
        let p = entry.map_err(|e| Error::io(&assets, e))?.path();
        if p.extension().is_some_and(|x| x == "webp") {
            files.push(p);
        }
    }
    files.sort();
    // One file per id: duplicate spellings (`23-fe0f-20e3` vs `0023-fe0f-20e3`) keep the first.
    let mut wanted: BTreeMap<String, PathBuf> = BTreeMap::new();
    for p in files {
        let Some(stem) = p.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let id = norm_key(stem);
        if labels.contains_key(&id) {
            wanted.entry(id).or_insert(p);
        }
    }
    if wanted.is_empty() {
        return Err(Error::bad_file(
            &assets,
            "no Fluent emoji WebP matched the labels",
        ));
    }
    let cache_path = dir
        .join(".cache")
        .join(format!("sprites-{}.bin", opts.sprite_size));
    let fingerprint = fingerprint(dir);
    let mut cached = if opts.cache {
        read_cache(&cache_path, opts.sprite_size, &fingerprint).unwrap_or_default()
    } else {
        HashMap::new()
    };
    let missing: Vec<(&String, &PathBuf)> = wanted
        .iter()
        .filter(|(id, _)| !cached.contains_key(*id))
        .collect();
    let decoded: Vec<(String, RgbaImage)> = missing
        .par_iter()
        .map(|(id, p)| Ok(((*id).clone(), decode_sprite(p, opts.sprite_size)?)))
        .collect::<Result<_>>()?;
    let write_back = !decoded.is_empty();
    cached.extend(decoded);
    if opts.cache && write_back {
        // A read-only data folder only costs the speed-up.
        let _ = write_cache(&cache_path, opts.sprite_size, &fingerprint, &cached);
    }
    let mut labels = labels;
    let mut out = Vec::with_capacity(wanted.len());
    for id in wanted.keys() {
        let (Some(l), Some(sprite)) = (labels.remove(id), cached.remove(id)) else {
            continue;
        };
        out.push(l.into_emoji(id.clone(), sprite));
    }
    Ok(out)
}

/// Identifies the unpacked Fluent package (the stamp written by fetch-data.sh), so a cache built
/// from other data is not reused.
fn fingerprint(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("fluent-emoji-3d/.verified-sha1")).unwrap_or_default()
}

fn read_cache(path: &Path, size: u32, fp: &[u8]) -> Option<HashMap<String, RgbaImage>> {
    let bytes = std::fs::read(path).ok()?;
    let mut r = bytes.as_slice();
    let mut take = |n: usize| -> Option<&[u8]> {
        if r.len() < n {
            return None;
        }
        let (a, b) = r.split_at(n);
        r = b;
        Some(a)
    };
    if take(8)? != CACHE_MAGIC {
        return None;
    }
    let u32_of = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    if u32_of(take(4)?) != size {
        return None;
    }
    let fp_len = u32_of(take(4)?) as usize;
    if take(fp_len)? != fp {
        return None;
    }
    let count = u32_of(take(4)?) as usize;
    let px = (size * size * 4) as usize;
    let mut out = HashMap::with_capacity(count);
    for _ in 0..count {
        let id_len = u32_of(take(4)?) as usize;
        let id = String::from_utf8(take(id_len)?.to_vec()).ok()?;
        let img = RgbaImage::from_raw(size, size, take(px)?.to_vec())?;
        out.insert(id, img);
    }
    Some(out)
}

fn write_cache(
    path: &Path,
    size: u32,
    fp: &[u8],
    sprites: &HashMap<String, RgbaImage>,
) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut buf = Vec::new();
    buf.extend_from_slice(CACHE_MAGIC);
    buf.extend_from_slice(&size.to_le_bytes());
    buf.extend_from_slice(&(fp.len() as u32).to_le_bytes());
    buf.extend_from_slice(fp);
    buf.extend_from_slice(&(sprites.len() as u32).to_le_bytes());
    let mut ids: Vec<&String> = sprites.keys().collect();
    ids.sort();
    for id in ids {
        buf.extend_from_slice(&(id.len() as u32).to_le_bytes());
        buf.extend_from_slice(id.as_bytes());
        buf.extend_from_slice(sprites[id].as_raw());
    }
    // Write then rename, so a concurrent reader never sees half a file.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::File::create(&tmp)?.write_all(&buf)?;
    std::fs::rename(tmp, path)
}

/// One emoji in the fixture's `labels.json`; its class follows from its id.
#[derive(Serialize, Deserialize)]
struct FixtureEntry {
    id: String,
    /// The CLDR name.
    name: String,
    unicode_name: String,
    short_names: Vec<String>,
    /// The emoji.json category.
    category: String,
    subcategory: String,
    keywords: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct FixtureFile {
    source: String,
    emoji: Vec<FixtureEntry>,
}

/// Loads the fixture layout: `labels.json` and straight-alpha PNG sprites in `sprites/<id>.png`.
/// Emoji outside the vocabulary are skipped, as in the npm layout.
pub fn load_fixture(dir: &Path, opts: &LoadOptions) -> Result<Vec<Emoji>> {
    let labels_path = dir.join(FIXTURE_LABELS);
    let file: FixtureFile = read_json(&labels_path)?;
    file.emoji
        .into_iter()
        .filter_map(|f| concept_of_emoji(&f.id).map(|class| (class, f)))
        .map(|(class, f)| {
            let sprite = decode_sprite(
                &dir.join("sprites").join(format!("{}.png", f.id)),
                opts.sprite_size,
            )?;
            let labels = Labels {
                class,
                cldr_name: f.name,
                unicode_name: f.unicode_name,
                short_names: f.short_names,
                group: f.category,
                subcategory: f.subcategory,
                keywords: f.keywords,
            };
            Ok(labels.into_emoji(f.id, sprite))
        })
        .collect()
}

/// Writes emoji in the fixture layout (sprites as they are loaded, straight alpha).
pub fn write_fixture(dir: &Path, emoji: &[&Emoji]) -> Result<()> {
    let sprites = dir.join("sprites");
    std::fs::create_dir_all(&sprites).map_err(|e| Error::io(&sprites, e))?;
    for e in emoji {
        let p = sprites.join(format!("{}.png", e.id));
        unpremultiply(&e.sprite)
            .save(&p)
            .map_err(|err| Error::bad_file(&p, err))?;
    }
    let file = FixtureFile {
        source: "Microsoft Fluent Emoji 3D (MIT) via npm @lobehub/fluent-emoji-3d@1.1.0, \
                 downsampled; labels from emoji-datasource-google@16.0.0 and emojilib@4.0.3 \
                 (MIT). See NOTICE."
            .into(),
        emoji: emoji
            .iter()
            .map(|e| FixtureEntry {
                id: e.id.clone(),
                name: e.cldr_name.clone(),
                unicode_name: e.unicode_name.clone(),
                short_names: e.short_names.clone(),
                category: e.group.clone(),
                subcategory: e.subcategory.clone(),
                keywords: e.keywords.clone(),
            })
            .collect(),
    };
    let p = dir.join(FIXTURE_LABELS);
    let json = serde_json::to_string_pretty(&file).map_err(|e| Error::bad_file(&p, e))?;
    std::fs::write(&p, json + "\n").map_err(|e| Error::io(&p, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_names_normalise() {
        assert_eq!(norm_key("0023-FE0F-20E3"), "23-20e3");
        assert_eq!(norm_key("1f3f4_e0067_e0062"), "1f3f4-e0067-e0062");
        assert_eq!(chars_of("1F436").as_deref(), Some("\u{1f436}"));
        let n = |s: &str| clean_cldr_name(s);
        assert_eq!(n("woman_s_hat").as_deref(), Some("womans hat"));
        assert_eq!(n("e_mail").as_deref(), Some("e-mail"));
        assert_eq!(n("t_rex").as_deref(), Some("t-rex"));
        assert_eq!(n("one_o_clock").as_deref(), Some("one o'clock"));
        assert_eq!(n("a_button").as_deref(), Some("a button"));
        assert_eq!(n("b_button").as_deref(), Some("b button"));
        assert_eq!(
            n("family adult, child").as_deref(),
            Some("family adult child")
        );
        assert_eq!(n("keycap_"), None);
    }
}
