//! Finding the inputs of a split: `ROOT/CLASS/**` (class = folder name), or a flat folder
//! with or without a labels CSV.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::IngestError;

/// One input file. `problem` is set when the file can be rejected without reading it.
#[derive(Debug, Clone)]
pub struct InputFile {
    pub key: String,
    pub path: PathBuf,
    pub size: u64,
    pub label: i32,
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub classes: Vec<String>,
    pub labeled: bool,
    /// Sorted by key.
    pub files: Vec<InputFile>,
    /// Keys of hidden files and folders, which are not inputs.
    pub hidden: Vec<String>,
    /// Class folders without any file.
    pub empty_classes: Vec<String>,
    /// Files the labels CSV names that the folder does not hold.
    pub labels_without_file: Vec<String>,
}

/// Class folders nest at most this deep (guards against symlink loops).
const MAX_DEPTH: usize = 32;

fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

fn join_key(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}/{name}")
    }
}

/// A directory's entries sorted by name, each with whether it is a directory (following
/// symlinks; a broken link counts as a file, so that reading it reports the problem).
fn entries(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>, IngestError> {
    let read = |e| IngestError::io(dir, e);
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(read)? {
        let entry = entry.map_err(read)?;
        let path = entry.path();
        let is_dir = fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(false);
        out.push((
            entry.file_name().to_string_lossy().into_owned(),
            path,
            is_dir,
        ));
    }
    out.sort();
    Ok(out)
}

fn file(key: String, path: PathBuf, label: i32, problem: Option<String>) -> InputFile {
    let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    InputFile {
        key,
        path,
        size,
        label,
        problem,
    }
}

fn walk_class(
    dir: &Path,
    prefix: &str,
    label: i32,
    depth: usize,
    inputs: &mut Inputs,
) -> Result<usize, IngestError> {
    if depth > MAX_DEPTH {
        return Err(IngestError::Source {
            path: dir.to_owned(),
            why: format!("folders nest deeper than {MAX_DEPTH} levels (a symlink loop?)"),
        });
    }
    let mut count = 0;
    for (name, path, is_dir) in entries(dir)? {
        let key = join_key(prefix, &name);
        if is_hidden(&name) {
            inputs.hidden.push(key);
        } else if is_dir {
            count += walk_class(&path, &key, label, depth + 1, inputs)?;
        } else {
            inputs.files.push(file(key, path, label, None));
            count += 1;
        }
    }
    Ok(count)
}

/// Scans `src`. A folder with sub-folders is read as `ROOT/CLASS/...`; one without is flat,
/// labeled by `labels_csv` when given, else unlabeled (label -1).
pub fn scan(src: &Path, labels_csv: Option<&Path>) -> Result<Inputs, IngestError> {
    let meta = fs::metadata(src).map_err(|e| IngestError::Source {
        path: src.to_owned(),
        why: format!("cannot open the input folder: {e}"),
    })?;
    if !meta.is_dir() {
        return Err(IngestError::Source {
            path: src.to_owned(),
            why: "not a folder; --src takes ROOT with ROOT/CLASS/*.JPEG or a flat folder".into(),
        });
    }
    let top = entries(src)?;
    let class_layout = top
        .iter()
        .any(|(name, _, is_dir)| *is_dir && !is_hidden(name));
    let mut inputs = Inputs::default();
    if class_layout {
        if let Some(csv) = labels_csv {
            return Err(IngestError::Labels {
                path: csv.to_owned(),
                why: format!(
                    "--labels is for a flat folder, but {} has class folders that already label it",
                    src.display()
                ),
            });
        }
        inputs.labeled = true;
        inputs.classes = top
            .iter()
            .filter(|(name, _, is_dir)| *is_dir && !is_hidden(name))
            .map(|(name, _, _)| name.clone())
            .collect();
        for (name, path, is_dir) in top {
            if is_hidden(&name) {
                inputs.hidden.push(name);
            } else if is_dir {
                let label = inputs.classes.binary_search(&name).expect("class listed") as i32;
                if walk_class(&path, &name, label, 1, &mut inputs)? == 0 {
                    inputs.empty_classes.push(name);
                }
            } else {
                let problem = Some("outside any class folder (ROOT/CLASS/file expected)".into());
                inputs.files.push(file(name, path, -1, problem));
            }
        }
    } else {
        let labels = labels_csv.map(read_labels).transpose()?;
        if let Some(labels) = &labels {
            inputs.labeled = true;
            inputs.classes = labels
                .values()
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
        }
        let mut listed = BTreeSet::new();
        for (name, path, _) in top {
            if is_hidden(&name) {
                inputs.hidden.push(name);
                continue;
            }
            let (label, problem) = match &labels {
                None => (-1, None),
                Some(map) => match map.get(&name) {
                    Some(class) => {
                        listed.insert(name.clone());
                        (
                            inputs.classes.binary_search(class).expect("class listed") as i32,
                            None,
                        )
                    }
                    None => (-1, Some("not listed in the --labels CSV".to_owned())),
                },
            };
            inputs.files.push(file(name, path, label, problem));
        }
        if let Some(labels) = labels {
            inputs.labels_without_file =
                labels.into_keys().filter(|k| !listed.contains(k)).collect();
        }
    }
    inputs.files.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(inputs)
}

/// Reads `file,class` lines (a first line starting with `file` or `filename` is a header).
/// Only the file name of the first field is used, so `val/x.JPEG` and `x.JPEG` both work.
fn read_labels(path: &Path) -> Result<BTreeMap<String, String>, IngestError> {
    let bad = |why: String| IngestError::Labels {
        path: path.to_owned(),
        why,
    };
    let text = fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let mut map = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((file, class)) = line.split_once(',') else {
            return Err(bad(format!(
                "line {}: expected `file,class`, got {line:?}",
                i + 1
            )));
        };
        let (file, class) = (file.trim(), class.trim());
        if i == 0 && matches!(file.to_ascii_lowercase().as_str(), "file" | "filename") {
            continue;
        }
        let name = file.rsplit('/').next().unwrap_or(file);
        if name.is_empty() || class.is_empty() {
            return Err(bad(format!(
                "line {}: empty file or class in {line:?}",
                i + 1
            )));
        }
        if let Some(prev) = map.insert(name.to_owned(), class.to_owned())
            && prev != class
        {
            return Err(bad(format!(
                "line {}: {name} is labeled both {prev:?} and {class:?}",
                i + 1
            )));
        }
    }
    if map.is_empty() {
        return Err(bad("no `file,class` rows".into()));
    }
    Ok(map)
}
