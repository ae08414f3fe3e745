//! Finding the inputs of a split: `ROOT/CLASS/**` (class = folder name), or a flat folder
//! with or without a labels CSV.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
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

/// Class folders nest at most this deep.
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

/// One directory entry. `name` is the UTF-8 name, or for a name that is not UTF-8 its bytes
/// with the non-ASCII ones escaped (`\xff`), which keeps distinct names distinct.
struct Entry {
    name: String,
    utf8: bool,
    path: PathBuf,
    /// Following symlinks; a broken link counts as a file, so that reading it reports the
    /// problem.
    is_dir: bool,
}

fn name_of(name: &OsStr) -> (String, bool) {
    match name.to_str() {
        Some(s) => (s.to_owned(), true),
        None => (name.as_bytes().escape_ascii().to_string(), false),
    }
}

/// A directory's entries sorted by name.
fn entries(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let is_dir = fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(false);
        let (name, utf8) = name_of(&entry.file_name());
        out.push(Entry {
            name,
            utf8,
            path,
            is_dir,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
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

/// A folder that cannot be walked, listed among the inputs as rejected.
fn bad_folder(key: String, path: PathBuf, why: String) -> InputFile {
    InputFile {
        key,
        path,
        size: 0,
        label: -1,
        problem: Some(why),
    }
}

const NOT_UTF8: &str = "its name is not valid UTF-8 (keys are UTF-8); rename it";

/// The folders from the class folder down to the one being walked, by (device, inode), to
/// tell a symlink loop from a deep tree.
type Ancestors = Vec<((u64, u64), String)>;

/// Walks one class folder. A problem with a sub-folder (unreadable, a symlink loop, too
/// deep) rejects that folder, listed like a bad file, and the walk goes on. `problem`
/// rejects every file found (a class folder whose name is not UTF-8).
fn walk_class(
    dir: &Path,
    prefix: &str,
    label: i32,
    problem: Option<&str>,
    ancestors: &mut Ancestors,
    inputs: &mut Inputs,
) -> usize {
    let reject = |inputs: &mut Inputs, why: String| {
        inputs
            .files
            .push(bad_folder(prefix.to_owned(), dir.to_owned(), why));
        1
    };
    // the input folder itself is the first ancestor
    if ancestors.len() > MAX_DEPTH {
        return reject(
            inputs,
            format!("folder nested deeper than {MAX_DEPTH} levels; not read"),
        );
    }
    let id = match fs::metadata(dir) {
        Ok(m) => (m.dev(), m.ino()),
        Err(e) => return reject(inputs, format!("unreadable folder: {e}")),
    };
    if let Some((_, key)) = ancestors.iter().find(|(a, _)| *a == id) {
        return reject(inputs, format!("a symlink loop back to {key}; not read"));
    }
    let list = match entries(dir) {
        Ok(list) => list,
        Err(e) => return reject(inputs, format!("unreadable folder: {e}")),
    };
    ancestors.push((id, prefix.to_owned()));
    let mut count = 0;
    for entry in list {
        let key = join_key(prefix, &entry.name);
        let problem = problem.or((!entry.utf8).then_some(NOT_UTF8));
        if is_hidden(&entry.name) {
            inputs.hidden.push(key);
        } else if entry.is_dir {
            count += walk_class(&entry.path, &key, label, problem, ancestors, inputs);
        } else {
            inputs
                .files
                .push(file(key, entry.path, label, problem.map(str::to_owned)));
            count += 1;
        }
    }
    ancestors.pop();
    count
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
    let top = entries(src).map_err(|e| IngestError::io(src, e))?;
    // a link back to the input folder is a loop too
    let root: Ancestors = vec![((meta.dev(), meta.ino()), "the input folder".into())];
    let class_layout = top.iter().any(|e| e.is_dir && !is_hidden(&e.name));
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
        // A class whose name is not UTF-8 is not a class: its files are rejected, never
        // merged with another class under a lossy name.
        inputs.classes = top
            .iter()
            .filter(|e| e.is_dir && e.utf8 && !is_hidden(&e.name))
            .map(|e| e.name.clone())
            .collect();
        for entry in top {
            if is_hidden(&entry.name) {
                inputs.hidden.push(entry.name);
            } else if entry.is_dir {
                let (label, problem) = match inputs.classes.binary_search(&entry.name) {
                    Ok(label) if entry.utf8 => (label as i32, None),
                    _ => (
                        -1,
                        Some("in a class folder whose name is not valid UTF-8; rename it"),
                    ),
                };
                let found = walk_class(
                    &entry.path,
                    &entry.name,
                    label,
                    problem,
                    &mut root.clone(),
                    &mut inputs,
                );
                if found == 0 {
                    inputs.empty_classes.push(entry.name);
                }
            } else {
                let problem = if entry.utf8 {
                    "outside any class folder (ROOT/CLASS/file expected)"
                } else {
                    NOT_UTF8
                };
                inputs
                    .files
                    .push(file(entry.name, entry.path, -1, Some(problem.into())));
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
        for entry in top {
            let name = entry.name;
            if is_hidden(&name) {
                inputs.hidden.push(name);
                continue;
            }
            let (label, problem) = match &labels {
                _ if !entry.utf8 => (-1, Some(NOT_UTF8.to_owned())),
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
            inputs.files.push(file(name, entry.path, label, problem));
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
    // spreadsheet programs start their CSV with a byte-order mark
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
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
