//! ImageNet class names (standard synset order, 0 = tench), as the official class-conditional
//! releases index them (`imagenet_ids2labels.yaml` of the official repository).

/// Number of ImageNet classes.
pub const N_CLASSES: usize = 1000;

const NAMES: &str = include_str!("imagenet_classes.txt");

/// The 1000 class names, id order.
pub fn class_names() -> Vec<String> {
    NAMES.lines().map(str::to_owned).collect()
}

/// A class a prompt names, with how well it does.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassMatch {
    /// Class id.
    pub id: usize,
    /// The class's names as listed (`red fox, Vulpes vulpes`).
    pub name: String,
    /// The name (synonym) of the class the prompt matched best.
    pub matched: String,
    /// Higher is better: 2 per word of a synonym found whole and in order in the prompt (+0.5
    /// for the class's first, common name), else the share of a synonym's words found.
    pub score: f32,
}

/// Words of the prompt that carry no class meaning.
const STOP_WORDS: &[&str] = &[
    "a", "an", "the", "of", "in", "on", "at", "with", "and", "or", "to", "by", "for", "from",
    "its", "his", "her", "their", "is", "are", "some", "photo", "picture", "image", "one", "two",
    "three", "four", "five", "many",
];

/// Lower-case words (letters and digits; `'` kept inside a word).
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\'').to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

/// One word compared as a user may write it: plural `s`/`es` and a case difference ignored.
fn same_word(a: &str, b: &str) -> bool {
    fn stem(w: &str) -> &str {
        if w.len() > 4 && w.ends_with("es") {
            &w[..w.len() - 2]
        } else if w.len() > 3 && w.ends_with('s') && !w.ends_with("ss") {
            &w[..w.len() - 1]
        } else {
            w
        }
    }
    a == b || stem(a) == stem(b)
}

/// The classes a prompt names, best first (at most `n`, only those it names at all), by the
/// class names and their synonyms (the WordNet lemmas of the list): "a red fox in the snow" →
/// 277 `red fox`. Ties go to the lower id.
pub fn classes_for_prompt(prompt: &str, n: usize) -> Vec<ClassMatch> {
    match_classes(NAMES.lines(), prompt, n)
}

/// [`classes_for_prompt`] over any list of class names (one class per entry, synonyms
/// separated by `, `), e.g. a class-conditional model's own.
pub fn match_classes<'a>(
    names: impl IntoIterator<Item = &'a str>,
    prompt: &str,
    n: usize,
) -> Vec<ClassMatch> {
    let pw: Vec<String> = words(prompt)
        .into_iter()
        .filter(|w| !STOP_WORDS.contains(&w.as_str()))
        .collect();
    if pw.is_empty() || n == 0 {
        return Vec::new();
    }
    let mut found: Vec<ClassMatch> = Vec::new();
    for (id, name) in names.into_iter().enumerate() {
        let mut best: Option<(f32, &str)> = None;
        for (k, synonym) in name.split(", ").enumerate() {
            let sw = words(synonym);
            if sw.is_empty() {
                continue;
            }
            let whole = pw
                .windows(sw.len())
                .any(|win| win.iter().zip(&sw).all(|(a, b)| same_word(a, b)));
            let score = if whole {
                2.0 * sw.len() as f32 + if k == 0 { 0.5 } else { 0.0 }
            } else {
                let hits = sw
                    .iter()
                    .filter(|w| !STOP_WORDS.contains(&w.as_str()))
                    .filter(|w| pw.iter().any(|p| same_word(p, w)))
                    .count();
                hits as f32 / sw.len() as f32
            };
            if score > 0.0 && best.is_none_or(|(b, _)| score > b) {
                best = Some((score, synonym));
            }
        }
        if let Some((score, matched)) = best {
            found.push(ClassMatch {
                id,
                name: name.to_string(),
                matched: matched.to_string(),
                score,
            });
        }
    }
    found.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
    found.truncate(n);
    found
}

/// Words of `prompt` that no class name contains (stop words aside): what the class models
/// cannot be asked for.
pub fn unknown_words(prompt: &str) -> Vec<String> {
    // The editor asks every frame while a description is typed: split the list once.
    static KNOWN: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let known = KNOWN.get_or_init(|| words(NAMES));
    words(prompt)
        .into_iter()
        .filter(|w| !STOP_WORDS.contains(&w.as_str()))
        .filter(|w| !known.iter().any(|k| same_word(k, w)))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousand_names_in_order() {
        let n = super::class_names();
        assert_eq!(n.len(), super::N_CLASSES);
        assert_eq!(n[0], "tench, Tinca tinca");
        assert!(n[999].starts_with("toilet tissue"));
    }

    #[test]
    fn prompts_name_classes() {
        let best = |p: &str| super::classes_for_prompt(p, 5);
        let m = best("a red fox in the snow");
        assert_eq!((m[0].id, m[0].matched.as_str()), (277, "red fox"));
        assert!(m.len() > 1 && m[1].score < m[0].score);
        // Synonyms and plurals.
        assert_eq!(best("two Arctic foxes")[0].id, 279);
        assert_eq!(best("white fox")[0].id, 279);
        assert_eq!(best("a tabby cat on a sofa")[0].id, 281);
        // The examples.
        assert_eq!(best("goldfish")[0].id, 1);
        assert_eq!(best("a church")[0].id, 497);
        assert_eq!(best("volcano at night")[0].id, 980);
        assert_eq!(best("espresso")[0].id, 967);
        assert!(best("the of and").is_empty());
        assert!(best("qwertyuiop").is_empty());
        assert_eq!(
            super::unknown_words("a red fox qwertyuiop"),
            vec!["qwertyuiop"]
        );
    }
}
