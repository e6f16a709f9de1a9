//! Build progress as the user sees it: plain lines, one spinner per running step on a terminal, or nothing.

#[allow(unused_imports)]
use super::*;
use crate::cli::ui::truncate;

/// Renders build progress: plain lines, one spinner per running step on a TTY, or nothing.
pub(super) enum Render {
    Quiet,
    Plain(Mutex<()>),
    Tty {
        multi: MultiProgress,
        bars: Mutex<HashMap<usize, ProgressBar>>,
        /// Why each running step missed, shown when it finishes.
        labels: Mutex<HashMap<usize, String>>,
    },
}

impl Progress for Render {
    fn event(&self, e: Event<'_>) {
        match self {
            Render::Quiet => {}
            Render::Plain(lock) => {
                let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
                let mut err = std::io::stderr().lock();
                let _ = match e {
                    Event::Start { n, label, text } => writeln!(err, "#{n} [{label}] {text}"),
                    Event::Cached { n } => writeln!(err, "#{n} CACHED"),
                    Event::Miss { n, why } => writeln!(err, "#{n} {why}"),
                    Event::Output { n, line } => writeln!(err, "#{n} {line}"),
                    Event::Explain { n, lines } => lines
                        .iter()
                        .try_for_each(|line| writeln!(err, "#{n} {line}")),
                    Event::Done { n, secs } => writeln!(err, "#{n} DONE {secs:.1}s"),
                    Event::Failed { n } => writeln!(err, "#{n} ERROR"),
                };
            }
            Render::Tty {
                multi,
                bars,
                labels,
            } => {
                let mut bars = bars.lock().unwrap_or_else(|p| p.into_inner());
                let mut labels = labels.lock().unwrap_or_else(|p| p.into_inner());
                match e {
                    Event::Start { n, label, text } => {
                        let pb = multi.add(ProgressBar::new_spinner());
                        pb.set_style(
                            ProgressStyle::with_template("{spinner} {prefix} {msg} {elapsed}")
                                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                        );
                        let head = format!("#{n} [{label}] {text}");
                        pb.set_prefix(truncate(&head, 70));
                        pb.enable_steady_tick(Duration::from_millis(100));
                        bars.insert(n, pb);
                    }
                    Event::Cached { n } => {
                        if let Some(pb) = bars.remove(&n) {
                            pb.set_style(
                                ProgressStyle::with_template("= {prefix} {msg}")
                                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                            );
                            pb.finish_with_message("CACHED");
                        }
                    }
                    Event::Miss { n, why } => {
                        if let Some(pb) = bars.get(&n) {
                            pb.set_message(truncate(why, 60));
                        }
                        labels.insert(n, why.trim_start_matches("cache miss: ").to_string());
                    }
                    Event::Explain { n, lines } => {
                        for line in lines {
                            let _ = multi.println(format!("#{n} {line}"));
                        }
                    }
                    Event::Output { n, line } => {
                        if let Some(pb) = bars.get(&n) {
                            pb.set_message(format!("| {}", truncate(line, 60)));
                        }
                    }
                    Event::Done { n, secs } => {
                        if let Some(pb) = bars.remove(&n) {
                            pb.set_style(
                                ProgressStyle::with_template("✓ {prefix} {msg}")
                                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                            );
                            let why = labels
                                .remove(&n)
                                .map(|w| format!(" ({})", truncate(&w, 50)))
                                .unwrap_or_default();
                            pb.finish_with_message(format!("DONE {secs:.1}s{why}"));
                        }
                    }
                    Event::Failed { n } => {
                        if let Some(pb) = bars.remove(&n) {
                            pb.abandon_with_message("ERROR");
                        }
                    }
                }
            }
        }
    }
}

pub(super) fn tty_render() -> Render {
    Render::Tty {
        multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
        bars: Mutex::new(HashMap::new()),
        labels: Mutex::new(HashMap::new()),
    }
}
