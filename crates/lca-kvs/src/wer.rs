//! Word error rate: how far a transcript is from what was said, for the demo's summary and
//! the recognizer comparison.

/// The words of `text` as compared: lower case, letters, digits and apostrophes only
/// ("O'Clock." and "o'clock" are the same word).
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\'').to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Edit distance in words between a reference and a hypothesis, and the reference's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WordErrors {
    /// Substitutions + deletions + insertions.
    pub errors: usize,
    /// Words in the reference.
    pub reference_words: usize,
}

impl WordErrors {
    /// Compares `hypothesis` with `reference` (word-level Levenshtein distance).
    pub fn between(reference: &str, hypothesis: &str) -> Self {
        let reference = words(reference);
        let hypothesis = words(hypothesis);
        let mut previous: Vec<usize> = (0..=hypothesis.len()).collect();
        let mut current = vec![0; hypothesis.len() + 1];
        for (i, said) in reference.iter().enumerate() {
            current[0] = i + 1;
            for (j, heard) in hypothesis.iter().enumerate() {
                let substitution = previous[j] + usize::from(said != heard);
                current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
            }
            std::mem::swap(&mut previous, &mut current);
        }
        Self {
            errors: previous[hypothesis.len()],
            reference_words: reference.len(),
        }
    }

    /// The word error rate (errors per reference word); 0 for an empty reference with an
    /// empty hypothesis.
    pub fn rate(&self) -> f64 {
        match self.reference_words {
            0 => f64::from(u8::from(self.errors > 0)),
            n => self.errors as f64 / n as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_substitutions_deletions_and_insertions() {
        let same = WordErrors::between("Nine o'clock, please.", "nine O'CLOCK please");
        assert_eq!(
            same,
            WordErrors {
                errors: 0,
                reference_words: 3
            }
        );
        // one substitution (car -> card), one deletion (the), one insertion (um)
        let three = WordErrors::between("bring the car in", "um bring card in");
        assert_eq!(three.errors, 3);
        assert!((three.rate() - 0.75).abs() < 1e-12);
        assert_eq!(WordErrors::between("a b c", "").errors, 3);
        assert_eq!(WordErrors::between("", "").rate(), 0.0);
        assert_eq!(WordErrors::between("", "x").rate(), 1.0);
    }
}
