//! Any number of sources merged into one state step, when how many is known only at run time.
//!
//! [`Keyed::merge`] nests one type per source, so the number of sources is fixed when the
//! program is compiled. A pipeline built from a description (the Python API builds its sources
//! from the user's list) has sources of one front type but a count only known at run time:
//! [`Keyed::merge_all`] takes them as a `Vec`.

use super::Keyed;
use crate::dataflow::{DecodeError, Fronts};

/// Sources of one front type merged into one state step, numbered in order: the first
/// group's sources first, then the next group's, and so on.
#[derive(Clone)]
pub struct MergeAll<F> {
    groups: Vec<F>,
}

impl<Fr: Fronts> Keyed<Fr> {
    /// Feeds this pipeline's records and every one of `others`' into the same state step, as
    /// [`Keyed::merge`] does for one, numbering the sources in order: this pipeline's first.
    ///
    /// ```
    /// use bettong_engine::{DecodeError, Engine, MemorySource, Pipeline, SinkConfig, SourceConfig};
    /// let source = || Pipeline::decode(|f: &[u8]| Ok::<_, DecodeError>(f.len() as u64)).key_by(|n| ((), n));
    /// let pipeline = source()
    ///     .merge_all((0..2).map(|_| source()).collect())
    ///     .state(|_: &(), total: &mut u64, n: u64| { *total += n; Some(*total) })
    ///     .encode(|_, total, out| out.extend_from_slice(format!("{total}\n").as_bytes()));
    /// let sources: Vec<SourceConfig> = ["a", "bb", "ccc"]
    ///     .into_iter()
    ///     .map(|f| SourceConfig::Memory(MemorySource::from_frames([f])))
    ///     .collect();
    /// let report = Engine::new().cores(1).run(pipeline, sources, SinkConfig::Memory)?;
    /// assert_eq!(report.output_lines().last().as_deref(), Some("6"));
    /// # Ok::<(), bettong_engine::Error>(())
    /// ```
    pub fn merge_all(self, others: Vec<Keyed<Fr>>) -> Keyed<MergeAll<Fr>> {
        let mut groups = Vec::with_capacity(others.len() + 1);
        groups.push(self.fronts);
        groups.extend(others.into_iter().map(|k| k.fronts));
        Keyed {
            fronts: MergeAll { groups },
        }
    }
}

impl<F: Fronts> Fronts for MergeAll<F> {
    type Key = F::Key;
    type Value = F::Value;

    fn count(&self) -> usize {
        self.groups.iter().map(Fronts::count).sum()
    }

    #[inline]
    fn decode(
        &mut self,
        mut source: usize,
        frame: &[u8],
        route: &mut impl FnMut(&Self::Key, Self::Value),
    ) -> Result<(), DecodeError> {
        for group in &mut self.groups {
            let n = group.count();
            if source < n {
                return group.decode(source, frame, route);
            }
            source -= n;
        }
        Err(
            DecodeError::new("no source of this index in the merged pipeline")
                .with_value(source as u64),
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::{DecodeError, Engine, MemorySource, Pipeline, SinkConfig, SourceConfig};

    /// Each source's frames go through its own front: source i tags its records with i.
    #[test]
    fn every_source_reaches_its_own_front() {
        let tagged = |tag: u64| {
            Pipeline::decode(move |f: &[u8]| Ok::<_, DecodeError>(f.len() as u64))
                .key_by(move |n| (tag, n))
        };
        let pipeline = tagged(0)
            .merge_all(vec![tagged(1), tagged(2)])
            .state(|tag: &u64, sum: &mut u64, n: u64| {
                *sum += n;
                Some((*tag, *sum))
            })
            .encode(|_, (tag, sum), out| {
                out.extend_from_slice(format!("{tag}:{sum}\n").as_bytes())
            });
        let sources: Vec<SourceConfig> = [vec!["a"], vec!["bb", "bb"], vec!["cccc"]]
            .into_iter()
            .map(|frames| SourceConfig::Memory(MemorySource::from_frames(frames)))
            .collect();
        let report = Engine::new()
            .cores(2)
            .run(pipeline, sources, SinkConfig::Memory)
            .expect("engine");
        let mut last: Vec<String> = report.output_lines().collect();
        last.sort();
        assert_eq!(last, ["0:1", "1:2", "1:4", "2:4"]);
    }
}
