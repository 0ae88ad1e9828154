//! `init_with_layer` puts the extra layer on the global subscriber beside the standard ones.
//! (Its own test binary: the global subscriber can be installed once per process.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

#[derive(Clone, Default)]
struct Counting(Arc<AtomicUsize>);

impl<S: Subscriber> Layer<S> for Counting {
    fn on_event(&self, _event: &Event<'_>, _ctx: Context<'_, S>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn the_extra_layer_sees_events() {
    let counting = Counting::default();
    let guard = drover_telemetry::init_with_layer("telemetry-extra-layer-test", counting.clone());
    assert!(guard.is_active());
    let before = counting.0.load(Ordering::SeqCst);
    tracing::info!("one event for every layer");
    assert_eq!(counting.0.load(Ordering::SeqCst), before + 1);
    // The standard layers are there too: spans get OpenTelemetry trace IDs.
    let span = tracing::info_span!("with a trace");
    let _entered = span.enter();
    assert!(drover_telemetry::current_traceparent().is_some());
    guard.shutdown();
}
