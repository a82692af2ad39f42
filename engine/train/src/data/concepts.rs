//! The default model's vocabulary: concrete, visually distinct concepts, one class each.
//!
//! The first model was conditioned on nine emoji groups ("Objects", "Symbols") whose members
//! share no look, so the condition carried at most 3 bits over 256 tokens and the stages learnt
//! to ignore it. A concept here is one thing an artist asks for ("red heart", "cat face"): its
//! class id is its index in [`CONCEPTS`], its caption is its name or one of its words, and its
//! pictures are the Fluent emoji listed with it (near-duplicates and skin tones are not listed,
//! so one concept has one look).

/// One concept of the vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concept {
    /// Name, lower case: the class name and the usual caption ("red heart").
    pub name: &'static str,
    /// Normalised code points of its emoji (see [`super::load::norm_key`]).
    pub emoji: &'static [&'static str],
    /// Other words for it, used in captions so that prompts may say them ("heart", "love").
    pub words: &'static [&'static str],
}

const fn c(
    name: &'static str,
    emoji: &'static [&'static str],
    words: &'static [&'static str],
) -> Concept {
    Concept { name, emoji, words }
}

/// The concepts in class-id order. The first sixteen are the ones issue 16 asks for.
pub const CONCEPTS: [Concept; 40] = [
    c("red heart", &["2764"], &["heart", "love"]),
    c("star", &["2b50"], &["gold star", "yellow star"]),
    c("sun", &["2600"], &["sunshine", "sunny"]),
    c("cat face", &["1f431"], &["cat", "kitten", "kitty"]),
    c("dog face", &["1f436"], &["dog", "puppy"]),
    c("apple", &["1f34e"], &["red apple", "fruit"]),
    c("pizza", &["1f355"], &["pizza slice"]),
    c("rocket", &["1f680"], &["spaceship"]),
    c("deciduous tree", &["1f333"], &["tree", "green tree"]),
    c("droplet", &["1f4a7"], &["water drop", "drop", "water"]),
    c("fire", &["1f525"], &["flame", "flames"]),
    c("snowflake", &["2744"], &["snow", "ice crystal"]),
    c("moon", &["1f319"], &["crescent moon", "crescent"]),
    c("flower", &["1f33c"], &["blossom", "daisy"]),
    c("car", &["1f697"], &["automobile", "red car"]),
    c("house", &["1f3e0"], &["home"]),
    c("banana", &["1f34c"], &["yellow fruit"]),
    c("watermelon", &["1f349"], &["melon"]),
    c("strawberry", &["1f353"], &["berry"]),
    c("birthday cake", &["1f382"], &["cake"]),
    c("doughnut", &["1f369"], &["donut"]),
    c("carrot", &["1f955"], &["vegetable"]),
    c("mushroom", &["1f344"], &["toadstool"]),
    c("cactus", &["1f335"], &["desert plant"]),
    c("rainbow", &["1f308"], &["rainbow arc"]),
    c("cloud", &["2601"], &["white cloud"]),
    c(
        "lightning",
        &["26a1"],
        &["lightning bolt", "bolt", "high voltage"],
    ),
    c("umbrella", &["2602"], &["parasol"]),
    c("balloon", &["1f388"], &["red balloon"]),
    c("gift", &["1f381"], &["present", "wrapped gift"]),
    c("soccer ball", &["26bd"], &["football", "ball"]),
    c("guitar", &["1f3b8"], &["electric guitar"]),
    c("bicycle", &["1f6b2"], &["bike"]),
    c("airplane", &["2708"], &["plane", "aeroplane"]),
    c("sailboat", &["26f5"], &["boat", "sailing boat"]),
    c("fish", &["1f41f"], &["blue fish"]),
    c("frog", &["1f438"], &["frog face", "toad"]),
    c("penguin", &["1f427"], &["emperor penguin"]),
    c("butterfly", &["1f98b"], &["monarch butterfly"]),
    c("ghost", &["1f47b"], &["spooky ghost"]),
];

/// Class names (the concepts' names) in class-id order.
pub fn class_names() -> Vec<&'static str> {
    CONCEPTS.iter().map(|c| c.name).collect()
}

/// Class id of the concept whose emoji has this normalised id; `None` when it is not in the
/// vocabulary.
pub fn concept_of_emoji(id: &str) -> Option<usize> {
    CONCEPTS.iter().position(|c| c.emoji.contains(&id))
}

/// Class id of the concept with this name or word (case-insensitive).
pub fn concept_named(word: &str) -> Option<usize> {
    let w = word.trim().to_lowercase();
    CONCEPTS
        .iter()
        .position(|c| c.name == w || c.words.contains(&w.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_is_distinct_and_complete() {
        let mut ids: Vec<&str> = CONCEPTS
            .iter()
            .flat_map(|c| c.emoji.iter().copied())
            .collect();
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n, "an emoji is listed under two concepts");
        let mut words: Vec<&str> = CONCEPTS
            .iter()
            .flat_map(|c| std::iter::once(c.name).chain(c.words.iter().copied()))
            .collect();
        let n = words.len();
        words.sort_unstable();
        words.dedup();
        assert_eq!(words.len(), n, "a word names two concepts");
        for want in [
            "red heart",
            "star",
            "sun",
            "cat face",
            "dog face",
            "apple",
            "pizza",
            "rocket",
            "deciduous tree",
            "droplet",
            "fire",
            "snowflake",
            "moon",
            "flower",
            "car",
            "house",
        ] {
            assert!(concept_named(want).is_some(), "{want} missing");
        }
        assert!(CONCEPTS.len() >= 32);
        assert_eq!(concept_named("Kitten"), Some(3));
        assert_eq!(concept_of_emoji("1f436"), Some(4));
        assert_eq!(concept_of_emoji("1f44d"), None);
        for c in &CONCEPTS {
            assert_eq!(c.name, c.name.to_lowercase());
            assert!(!c.emoji.is_empty());
        }
    }
}
