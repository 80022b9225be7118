//! What a download did per class: the counts of the summary table, and whether each class
//! reached `--per-class` or why not.

use super::fetch::FailReason;
use super::topup::MAX_ROUNDS;
use std::collections::BTreeMap;

/// Per-class counts for the summary table.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClassSummary {
    pub class: String,
    /// Results the search (or URL list) gave, over all rounds, already-known URLs included.
    pub found: usize,
    pub downloaded: usize,
    /// Failures by reason column (`timeout`, `http`, `not_image`, `too_large`, `decode`, `network`).
    pub failed: BTreeMap<String, usize>,
    pub duplicates: usize,
    pub near_duplicates: usize,
    /// Images dropped because the same picture was also found for another class.
    pub label_conflicts: usize,
    pub train: usize,
    pub test: usize,
    /// `--per-class`: kept images (train + test) the class was filled towards.
    pub target: usize,
    /// Kept images missing from `target` at the end; 0 when the target was met.
    pub short_by: usize,
    /// The source had no new result left. A class short for this reason needs another query
    /// (`--query-suffix`) or list, not a re-run; one short for any other reason can be topped up
    /// by running the same command again.
    pub search_exhausted: bool,
    /// Download rounds: the first batch of results and each top-up after it.
    pub rounds: usize,
    /// The URLs came from `--urls-from`, which runs dry instead of being searched further.
    pub from_list: bool,
}

impl ClassSummary {
    /// Kept images, train and test.
    pub fn kept(&self) -> usize {
        self.train + self.test
    }

    /// One line: whether the class reached its target and, if not, why and what would help.
    pub fn outcome(&self) -> String {
        let (class, kept) = (&self.class, self.kept());
        if self.short_by == 0 {
            return format!("{class}: {kept} kept (target met)");
        }
        let why = if self.search_exhausted && self.from_list {
            format!("the URL list ran dry after {} URLs", self.found)
        } else if self.search_exhausted {
            format!(
                "search ran dry after {} results; try another --query-suffix",
                self.found
            )
        } else if self.rounds >= MAX_ROUNDS {
            format!(
                "stopped after {} rounds ({} results); run the same command again to fetch more",
                self.rounds, self.found
            )
        } else {
            "near-duplicates or label conflicts were dropped after the download; \
             run the same command again to top up"
                .to_string()
        };
        format!("{class}: {kept} kept, {} short: {why}", self.short_by)
    }
}

/// The summary table printed at the end of a download, then one outcome line per class.
pub fn summary_table(s: &[ClassSummary]) -> String {
    let cols = FailReason::COLUMNS;
    let w = s
        .iter()
        .map(|c| c.class.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut t = format!("{:<w$} {:>6} {:>10}", "class", "found", "downloaded");
    for c in cols {
        t.push_str(&format!(" {c:>9}"));
    }
    t.push_str(&format!(
        " {:>6} {:>9} {:>9} {:>6} {:>5} {:>5}\n",
        "dups", "near_dups", "conflicts", "train", "test", "short"
    ));
    for c in s {
        t.push_str(&format!(
            "{:<w$} {:>6} {:>10}",
            c.class, c.found, c.downloaded
        ));
        for col in cols {
            t.push_str(&format!(" {:>9}", c.failed.get(col).copied().unwrap_or(0)));
        }
        t.push_str(&format!(
            " {:>6} {:>9} {:>9} {:>6} {:>5} {:>5}\n",
            c.duplicates, c.near_duplicates, c.label_conflicts, c.train, c.test, c.short_by
        ));
    }
    for c in s {
        t.push_str(&c.outcome());
        t.push('\n');
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(short_by: usize, exhausted: bool, rounds: usize) -> ClassSummary {
        ClassSummary {
            class: "cat".into(),
            found: 412,
            train: 60,
            test: 13,
            target: 73 + short_by,
            short_by,
            search_exhausted: exhausted,
            rounds,
            ..Default::default()
        }
    }

    #[test]
    fn outcome_says_met_or_why_not() {
        assert_eq!(summary(0, true, 3).outcome(), "cat: 73 kept (target met)");
        let dry = summary(27, true, 3).outcome();
        assert!(
            dry.starts_with("cat: 73 kept, 27 short: search ran dry after 412 results"),
            "{dry}"
        );
        let list = ClassSummary {
            from_list: true,
            ..summary(27, true, 1)
        };
        assert!(list.outcome().contains("URL list ran dry after 412 URLs"));
        assert!(summary(27, false, MAX_ROUNDS)
            .outcome()
            .contains("stopped after 10 rounds"));
        assert!(summary(2, false, 1).outcome().contains("near-duplicates"));
    }

    #[test]
    fn table_has_a_short_column_and_outcome_lines() {
        let t = summary_table(&[summary(0, false, 1), summary(27, true, 4)]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].ends_with("short"), "{t}");
        assert!(lines[1].ends_with(" 0") && lines[2].ends_with(" 27"), "{t}");
        assert_eq!(lines[3], "cat: 73 kept (target met)");
        assert!(lines[4].contains("search ran dry"), "{t}");
    }
}
