//! ImageNet class names (standard synset order, 0 = tench), as the official class-conditional
//! releases index them (`imagenet_ids2labels.yaml` of the official repository).

/// Number of ImageNet classes.
pub const N_CLASSES: usize = 1000;

const NAMES: &str = include_str!("imagenet_classes.txt");

/// The 1000 class names, id order.
pub fn class_names() -> Vec<String> {
    NAMES.lines().map(str::to_owned).collect()
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
}
