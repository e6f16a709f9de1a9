//! Archive commands: `kiln import` (a rootfs tarball), `kiln load` and `kiln save` (docker-archive and OCI layouts).

#[allow(unused_imports)]
use super::*;

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Rootfs tarball (plain, gzip or zstd), or - for standard input
    file: String,
    /// Name the image REPOSITORY[:TAG]
    reference: Option<String>,
    /// Commit message for the history entry
    #[arg(short, long)]
    message: Option<String>,
    /// Layer compression
    #[arg(long, value_enum, default_value = "zstd")]
    compression: CompressionArg,
    /// Apply a Dockerfile instruction to the image's config (CMD, ENTRYPOINT, ENV, EXPOSE,
    /// LABEL, ONBUILD, USER, VOLUME, WORKDIR, STOPSIGNAL, HEALTHCHECK)
    #[arg(short = 'c', long = "change", value_name = "INSTRUCTION")]
    change: Vec<String>,
}

pub fn import(ctx: &Ctx, a: ImportArgs) -> Result<i32> {
    let tags = parse_tags(&a.reference.iter().cloned().collect::<Vec<_>>())?;
    let store = ctx.store()?;
    let opts = ImportOptions {
        compression: a.compression.into(),
        message: a.message,
        created: crate::timefmt::source_date_epoch(None).map_err(anyhow::Error::msg)?,
        source: a.file.clone(),
        changes: if a.change.is_empty() {
            None
        } else {
            Some(crate::plan::config_from_changes(&a.change)?)
        },
    };
    let image = if a.file == "-" {
        import_tarball(&store, std::io::stdin().lock(), &opts, &tags)
    } else {
        let f = std::fs::File::open(&a.file).with_context(|| format!("open {}", a.file))?;
        import_tarball(&store, f, &opts, &tags)
    }
    .with_context(|| format!("import {}", a.file))?;
    println!("{}", image.id());
    Ok(0)
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Read from an archive file or OCI layout directory instead of standard input
    #[arg(short, long)]
    input: Option<PathBuf>,
    /// Print nothing but errors
    #[arg(short, long)]
    quiet: bool,
}

pub fn load(ctx: &Ctx, a: LoadArgs) -> Result<i32> {
    let store = ctx.store()?;
    let loaded = match &a.input {
        Some(p) => crate::image::archive::load_path(&store, p)
            .with_context(|| format!("load {}", p.display()))?,
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                return Err(anyhow::anyhow!(
                    "requested load from stdin, but stdin is empty"
                ))
                .context(Hint(
                    "pass an archive with -i FILE, or pipe one in: kiln load < image.tar".into(),
                ));
            }
            crate::image::archive::load_reader(&store, stdin.lock(), "standard input")
                .context("load from standard input")?
        }
    };
    if !a.quiet {
        for l in loaded {
            if l.tags.is_empty() {
                println!("Loaded image ID: {}", l.image.id());
            }
            for t in l.tags {
                println!(
                    "Loaded image: {}",
                    Reference::parse(&t).map(|r| r.familiar()).unwrap_or(t)
                );
            }
        }
    }
    Ok(0)
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FormatArg {
    Oci,
    Docker,
}

#[derive(Args, Debug)]
pub struct SaveArgs {
    /// Images to save
    #[arg(required = true)]
    images: Vec<String>,
    /// Write to a file instead of standard output
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Archive format: an OCI archive, or a docker-archive as `docker save` writes
    #[arg(long, value_enum, default_value = "oci")]
    format: FormatArg,
    /// Layer compression in an OCI archive: gzip (default; every OCI tool reads it) or zstd (as
    /// stored: faster, smaller, needs a recent consumer). docker-archives are always uncompressed
    #[arg(long, value_enum, default_value = "gzip")]
    compression: CompressionArg,
}

pub fn save(ctx: &Ctx, a: SaveArgs) -> Result<i32> {
    let store = ctx.store()?;
    let mut items = Vec::new();
    for name in &a.images {
        let r = resolve(&store, name)?;
        items.push(SaveItem {
            image: r.image,
            reference: r.reference.filter(|r| r.tag.is_some()),
        });
    }
    let format = match a.format {
        FormatArg::Oci => ArchiveFormat::Oci,
        FormatArg::Docker => ArchiveFormat::Docker,
    };
    if format == ArchiveFormat::Oci {
        convert_layers(&store, &items, a.compression.into())?;
    }
    match &a.output {
        Some(path) => {
            // Nothing half-written: a temp file beside the destination, renamed when complete.
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let tmp = tempfile::Builder::new()
                .prefix(".kiln-save-")
                .tempfile_in(dir)
                .with_context(|| format!("create a file in {}", dir.display()))?;
            let w = std::io::BufWriter::new(tmp);
            let w = archive::save(&store, &items, format, Some(a.compression.into()), w)?;
            let tmp = w
                .into_inner()
                .map_err(|e| e.into_error())
                .context("write archive")?;
            tmp.as_file().sync_all().context("fsync archive")?;
            // A file kiln writes for the user gets the usual mode (tempfile makes 0600).
            std::fs::set_permissions(
                tmp.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o644),
            )
            .context("chmod archive")?;
            tmp.persist(path)
                .with_context(|| format!("write {}", path.display()))?;
        }
        None => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                return Err(anyhow::anyhow!("cowardly refusing to save to a terminal"))
                    .context(Hint("use the -o flag or redirect standard output".into()));
            }
            let w = std::io::BufWriter::new(stdout.lock());
            crate::image::archive::save(&store, &items, format, Some(a.compression.into()), w)?
                .flush()?;
        }
    }
    Ok(0)
}

/// Re-encodes the layers a save needs in another compression (the first save of a zstd-built
/// image as gzip), with a progress bar on a terminal. Each variant is kept, so the next save is
/// instant; the encoder uses every core.
pub(super) fn convert_layers(store: &Store, items: &[SaveItem], c: Compression) -> Result<()> {
    let todo = crate::image::archive::layers_to_encode(store, items, c)?;
    if todo.is_empty() {
        return Ok(());
    }
    let total: u64 = todo.iter().map(|l| l.uncompressed_size).sum();
    let what = format!(
        "compressing {} layer{} ({}) as {}, once",
        todo.len(),
        if todo.len() == 1 { "" } else { "s" },
        timefmt::human_size(total),
        match c {
            Compression::None => "plain tar",
            c => c.name(),
        }
    );
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b.set_message(what);
        Some(b)
    } else {
        eprintln!("{what}");
        None
    };
    for l in &todo {
        crate::image::archive::layer_in(store, l, c)?;
        if let Some(b) = &bar {
            b.inc(l.uncompressed_size);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(())
}
