//! The floor under a rule run: what a bare Rhai run of the `rules-1000` bench's script costs.
//!
//! `cargo run --release -p mqtter-rules --example rhai_floor` runs `let topic = event.topic;`
//! with a one-field `event` map, on one thread, the way a rule worker does (a fresh scope per
//! run, the engine's limits set, a progress callback), and prints nanoseconds per run. Nothing
//! of the engine's own bookkeeping (queue, event map, trace, counters) is in the figure: it is
//! what no amount of work around the interpreter can take away (docs/BENCHMARKS.md).

use std::time::Instant;

use rhai::{Dynamic, Engine, Map, Scope};

fn main() {
    let mut engine = Engine::new();
    engine
        .set_max_operations(100_000)
        .set_max_call_levels(32)
        .set_max_expr_depths(64, 32);
    // As the rule workers' budget check: the clock every 64 operations.
    let deadline = Instant::now() + std::time::Duration::from_secs(3600);
    engine.on_progress(move |ops| {
        (ops % 64 == 0 && Instant::now() > deadline).then(|| Dynamic::from("over its budget"))
    });
    let ast = engine
        .compile("let topic = event.topic;")
        .expect("the script compiles");
    let topic = "bench/rules/7";
    let runs = 2_000_000u32;
    for round in 0..3 {
        let start = Instant::now();
        for _ in 0..runs {
            let mut map = Map::new();
            map.insert("topic".into(), Dynamic::from(topic.to_string()));
            let mut scope = Scope::new();
            scope.push_dynamic("event", Dynamic::from_map(map));
            engine
                .run_ast_with_scope(&mut scope, &ast)
                .expect("the script runs");
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(runs);
        println!("round {round}: {ns:.0} ns per run (map built, scope, run)");
    }
    let start = Instant::now();
    for _ in 0..runs {
        let mut map = Map::new();
        map.insert("topic".into(), Dynamic::from(topic.to_string()));
        let _ = std::hint::black_box(Dynamic::from_map(map));
    }
    let ns = start.elapsed().as_nanos() as f64 / f64::from(runs);
    println!("the map alone: {ns:.0} ns");
}
