//! Operators, through the data-driven `check` helper (inputs per batch, expected output
//! per batch).
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{check, config, run, sorted};

fn s(x: &str) -> String {
    x.to_owned()
}

fn words(batches: &[&str]) -> Vec<Vec<String>> {
    batches
        .iter()
        .map(|b| b.split_whitespace().map(s).collect())
        .collect()
}

#[test]
fn narrow_operators_and_empty_batches() {
    check(
        words(&["a bb ccc", "", "dddd e"]),
        |_, w| {
            Ok(w.map(|x| x.len() as u64)
                .filter(|n| *n > 1)
                .flat_map(|n| vec![n, n * 10]))
        },
        &[
            (1, vec![2, 20, 3, 30]),
            (2, vec![]),
            (3, vec![4, 40]),
            (4, vec![]),
        ],
    );
}

#[test]
fn map_partitions_sees_each_partition_whole() {
    check(
        words(&["a b c", "d"]),
        |_, w| Ok(w.map_partitions(|records: Vec<String>| vec![records.len() as u64])),
        &[(1, vec![3]), (2, vec![1])],
    );
}

#[test]
fn union_repartition_count_and_reduce() {
    check(
        vec![vec![1u64, 2, 3], vec![], vec![10]],
        |_, n| Ok(n.union(&n.map(|x| x * 100)).repartition(2).count()),
        &[(1, vec![6]), (2, vec![0]), (3, vec![2])],
    );
    check(
        vec![vec![1u64, 2, 3], vec![], vec![10]],
        |_, n| Ok(n.reduce(|a, b| a + b)),
        &[(1, vec![6]), (2, vec![]), (3, vec![10])],
    );
}

#[test]
fn repartition_spreads_records_over_partitions() {
    let out = run(config(), vec![(0..30u64).collect()], 1, |_, n| {
        Ok(n.repartition(3))
    });
    let sizes: Vec<usize> = out[0].1.iter().map(Vec::len).collect();
    assert_eq!(sizes, [10, 10, 10]);
}

#[test]
fn count_by_value_and_key_operators() {
    check(
        words(&["a b a", "b", ""]),
        |_, w| Ok(w.count_by_value()),
        &[
            (1, vec![(s("a"), 2), (s("b"), 1)]),
            (2, vec![(s("b"), 1)]),
            (3, vec![]),
        ],
    );
    check(
        vec![vec![(s("k"), 1i64), (s("j"), 5), (s("k"), 2)]],
        |_, p| {
            Ok(p.group_by_key().map_values(|mut v: Vec<i64>| {
                v.sort();
                v
            }))
        },
        &[(1, vec![(s("j"), vec![5]), (s("k"), vec![1, 2])])],
    );
    check(
        vec![vec![(s("k"), 1i64), (s("j"), 5), (s("k"), 2)]],
        |_, p| {
            Ok(p.combine_by_key(
                |v| (v, 1u32),
                |(sum, n), v| (sum + v, n + 1),
                |(a, n), (b, m)| (a + b, n + m),
            ))
        },
        &[(1, vec![(s("j"), (5, 1)), (s("k"), (3, 2))])],
    );
}

#[test]
fn joins() {
    // One input stream carries both sides, tagged; they are split with filter.
    let input = vec![vec![
        (s("L"), (1u32, s("a"))),
        (s("L"), (2, s("b"))),
        (s("R"), (1, s("x"))),
        (s("R"), (3, s("z"))),
        (s("R"), (1, s("y"))),
    ]];
    let sides = |p: engine::DStream<(String, (u32, String))>| {
        let l = p.filter(|(side, _)| side == "L").map(|(_, kv)| kv);
        let r = p.filter(|(side, _)| side == "R").map(|(_, kv)| kv);
        (l, r)
    };
    check(
        input.clone(),
        move |_, p| {
            let (l, r) = sides(p);
            Ok(l.join(&r))
        },
        &[(1, vec![(1, (s("a"), s("x"))), (1, (s("a"), s("y")))])],
    );
    check(
        input.clone(),
        move |_, p| {
            let (l, r) = sides(p);
            Ok(l.left_outer_join(&r))
        },
        &[(
            1,
            vec![
                (1, (s("a"), Some(s("x")))),
                (1, (s("a"), Some(s("y")))),
                (2, (s("b"), None)),
            ],
        )],
    );
    check(
        input.clone(),
        move |_, p| {
            let (l, r) = sides(p);
            Ok(l.right_outer_join(&r))
        },
        &[(
            1,
            vec![
                (1, (Some(s("a")), s("x"))),
                (1, (Some(s("a")), s("y"))),
                (3, (None, s("z"))),
            ],
        )],
    );
    check(
        input.clone(),
        move |_, p| {
            let (l, r) = sides(p);
            Ok(l.full_outer_join(&r))
        },
        &[(
            1,
            vec![
                (1, (Some(s("a")), Some(s("x")))),
                (1, (Some(s("a")), Some(s("y")))),
                (2, (Some(s("b")), None)),
                (3, (None, Some(s("z")))),
            ],
        )],
    );
    check(
        input,
        move |_, p| {
            let (l, r) = sides(p);
            Ok(l.cogroup(&r)
                .map_values(|(mut a, mut b): (Vec<String>, Vec<String>)| {
                    a.sort();
                    b.sort();
                    (a, b)
                }))
        },
        &[(
            1,
            vec![
                (1, (vec![s("a")], vec![s("x"), s("y")])),
                (2, (vec![s("b")], vec![])),
                (3, (vec![], vec![s("z")])),
            ],
        )],
    );
}

#[test]
fn transform_sees_the_batch_and_its_time() {
    check(
        vec![vec![1u64, 2], vec![3]],
        |_, n| {
            Ok(n.transform(|data, time| {
                let sum: u64 = data.iter().sum();
                engine::BatchData::from(vec![
                    (time.as_millis() - support::START_MS) / 1_000 * 100 + sum,
                ])
            }))
        },
        &[(1, vec![103]), (2, vec![203]), (3, vec![300])],
    );
}

#[test]
fn windows() {
    let secs = Duration::from_secs;
    // window(3 s, 2 s): batches at 2, 4, 6 over (t-3, t].
    check(
        vec![vec![1u64], vec![2], vec![3], vec![4], vec![5], vec![6]],
        move |_, n| n.window(secs(3), secs(2)),
        &[(2, vec![1, 2]), (4, vec![2, 3, 4]), (6, vec![4, 5, 6])],
    );
    check(
        vec![vec![1u64], vec![2, 2], vec![], vec![4]],
        move |_, n| n.count_by_window(secs(2), secs(1)),
        &[(1, vec![1]), (2, vec![3]), (3, vec![2]), (4, vec![1])],
    );
    check(
        vec![vec![1u64], vec![2, 2], vec![], vec![4]],
        move |_, n| n.reduce_by_window(|a, b| a + b, secs(2), secs(1)),
        &[(1, vec![1]), (2, vec![5]), (3, vec![4]), (4, vec![4])],
    );
    check(
        words(&["a b", "a", "", "c"]),
        move |_, w| {
            w.map(|x| (x, 1u32))
                .group_by_key_and_window(secs(2), secs(2))
                .map(|x| x.map_values(|v: Vec<u32>| v.len()))
        },
        &[(2, vec![(s("a"), 2), (s("b"), 1)]), (4, vec![(s("c"), 1)])],
    );
}

#[test]
fn windows_with_and_without_inverse_agree() {
    let secs = Duration::from_secs;
    // Pseudo-random words over 12 batches, some empty.
    let mut x = 7u64;
    let inputs: Vec<Vec<String>> = (0..12)
        .map(|i| {
            if i % 5 == 3 {
                return vec![];
            }
            (0..20)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    format!("w{}", (x >> 33) % 7)
                })
                .collect()
        })
        .collect();
    for (len, slide) in [(3, 1), (4, 2), (2, 2), (6, 3)] {
        let plain = run(config(), inputs.clone(), 12, move |_, w| {
            w.map(|x| (x, 1i64))
                .reduce_by_key_and_window(|a, b| a + b, secs(len), secs(slide))
        });
        let incremental = run(config(), inputs.clone(), 12, move |_, w| {
            w.map(|x| (x, 1i64)).reduce_by_key_and_window_inv(
                |a, b| a + b,
                |a, b| a - b,
                secs(len),
                secs(slide),
                Some(|_: &String, c: &i64| *c != 0),
            )
        });
        let by_value = run(config(), inputs.clone(), 12, move |_, w| {
            w.count_by_value_and_window(secs(len), secs(slide))
        });
        let plain = sorted(&plain);
        assert!(
            plain.len() >= 12 / slide as usize,
            "every slide has a batch"
        );
        assert_eq!(sorted(&incremental), plain, "window {len}s/{slide}s");
        let by_value: Vec<(u64, Vec<(String, i64)>)> = sorted(&by_value)
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().map(|(w, c)| (w, c as i64)).collect()))
            .collect();
        assert_eq!(by_value, plain, "count_by_value_and_window {len}s/{slide}s");
    }
}

#[test]
fn windows_that_are_not_multiples_of_the_interval_are_rejected_when_built() {
    let ctx = engine::StreamingContext::new(config()).unwrap();
    let n = ctx.queue_stream::<u64>(vec![]).unwrap();
    let err = n
        .window(Duration::from_millis(2_500), Duration::from_secs(1))
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "invalid graph at `window#{}`: window length of 2500 ms is not a positive multiple of the parent stream's slide (1000 ms)",
            n.lineage()
        )
    );
    let err = n
        .map(|x| (x, x))
        .reduce_by_key_and_window(
            |a, b| a + b,
            Duration::from_secs(4),
            Duration::from_millis(1_500),
        )
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("slide of 1500 ms is not a positive multiple"),
        "{err}"
    );
    // A window of a window must be a multiple of the inner window's slide.
    let w = n
        .window(Duration::from_secs(4), Duration::from_secs(2))
        .unwrap();
    let err = w
        .window(Duration::from_secs(3), Duration::from_secs(2))
        .err()
        .unwrap();
    assert!(err.to_string().contains("window length of 3000 ms is not a positive multiple of the parent stream's slide (2000 ms)"), "{err}");
}

#[test]
fn graph_errors_recorded_while_building_surface_at_start() {
    let ctx = engine::StreamingContext::new(config()).unwrap();
    let n = ctx.queue_stream::<u64>(vec![]).unwrap();
    let w = n
        .window(Duration::from_secs(2), Duration::from_secs(2))
        .unwrap();
    w.union(&n).print(1);
    let err = ctx.start().unwrap_err().to_string();
    assert!(
        err.contains("union") && err.contains("different slides (2000 ms and 1000 ms)"),
        "{err}"
    );

    let ctx = engine::StreamingContext::new(config()).unwrap();
    ctx.queue_stream::<u64>(vec![]).unwrap();
    let err = ctx.start().unwrap_err().to_string();
    assert!(err.contains("no output operations"), "{err}");
}

#[test]
fn update_state_by_key_keeps_a_running_total_and_removes_keys() {
    check(
        words(&["a b a", "b", "", "drop a"]),
        |_, w| {
            Ok(w.map(|x| (x, 1u64))
                .update_state_by_key(|new: Vec<u64>, total: Option<u64>| {
                    let total = total.unwrap_or(0) + new.iter().sum::<u64>();
                    // A key removes itself when it reaches 3 occurrences.
                    (total < 3).then_some(total)
                }))
        },
        &[
            (1, vec![(s("a"), 2), (s("b"), 1)]),
            (2, vec![(s("a"), 2), (s("b"), 2)]),
            (3, vec![(s("a"), 2), (s("b"), 2)]),
            (4, vec![(s("b"), 2), (s("drop"), 1)]),
        ],
    );
}

#[test]
fn update_state_by_key_keeps_the_state_order_and_appends_new_keys_in_batch_order() {
    // One state partition, so the output's order is the state's order. A key removes
    // itself at 3; "m" and "n" are new in batch 2.
    let out = run(
        config(),
        words(&["a b c d e f g h", "c c m n b", ""]),
        3,
        |_, w| {
            Ok(w.map(|x| (x, 1u64)).update_state_by_key_with(
                |new: Vec<u64>, total: Option<u64>| {
                    let total = total.unwrap_or(0) + new.iter().sum::<u64>();
                    (total < 3).then_some(total)
                },
                1,
                Vec::new(),
            ))
        },
    );
    let keys = |k: usize| -> Vec<String> { out[k].1[0].iter().map(|(w, _)| w.clone()).collect() };
    let first = keys(0);
    assert_eq!(first.len(), 8);
    let second = keys(1);
    // The existing keys keep their order, without the removed "c"; the new keys follow.
    let kept: Vec<String> = first.iter().filter(|w| *w != "c").cloned().collect();
    assert_eq!(second[..kept.len()], kept[..]);
    let mut new_keys = second[kept.len()..].to_vec();
    new_keys.sort();
    assert_eq!(new_keys, [s("m"), s("n")]);
    assert_eq!(
        out[1].1[0].iter().find(|(w, _)| w == "b"),
        Some(&(s("b"), 2))
    );
    // A batch without data keeps every key and its order.
    assert_eq!(out[2].1, out[1].1);
}

#[test]
fn update_state_by_key_after_a_key_operator_gives_the_same_totals_either_way() {
    // With the reduce's partition count the state reads the reduce's output as it is; with
    // another it groups it first. Both must count alike, and remove alike.
    for state_partitions in [3, 2, 1] {
        check(
            words(&["a b a c", "b", "", "c c a"]),
            move |_, w| {
                Ok(w.map(|x| (x, 1u64))
                    .reduce_by_key_with_partitions(|a, b| a + b, 3)
                    .update_state_by_key_with(
                        |new: Vec<u64>, total: Option<u64>| {
                            let total = total.unwrap_or(0) + new.iter().sum::<u64>();
                            (total < 3).then_some(total)
                        },
                        state_partitions,
                        vec![(s("z"), 1)],
                    ))
            },
            &[
                (1, vec![(s("a"), 2), (s("b"), 1), (s("c"), 1), (s("z"), 1)]),
                (2, vec![(s("a"), 2), (s("b"), 2), (s("c"), 1), (s("z"), 1)]),
                (3, vec![(s("a"), 2), (s("b"), 2), (s("c"), 1), (s("z"), 1)]),
                (4, vec![(s("b"), 2), (s("z"), 1)]),
            ],
        );
    }
}

#[test]
fn update_state_by_key_with_initial_state() {
    check(
        words(&["a", ""]),
        |_, w| {
            Ok(w.map(|x| (x, 1u64)).update_state_by_key_with(
                |new: Vec<u64>, total: Option<u64>| Some(total.unwrap_or(0) + new.len() as u64),
                1,
                vec![(s("a"), 10), (s("z"), 5)],
            ))
        },
        &[
            (1, vec![(s("a"), 11), (s("z"), 5)]),
            (2, vec![(s("a"), 11), (s("z"), 5)]),
        ],
    );
}

#[test]
fn map_with_state_emits_per_record_and_times_out_idle_keys() {
    use engine::{State, StateSpec};
    let spec = || {
        StateSpec::function(|word: &String, one: Option<u64>, state: &mut State<u64>| {
            if state.is_timing_out() {
                return format!("{word} timed out at {}", state.get().copied().unwrap_or(0));
            }
            let total = state.get().copied().unwrap_or(0) + one.unwrap_or(0);
            state.update(total);
            format!("{word}={total}")
        })
        .timeout(Duration::from_secs(2))
    };
    // "a" gets data at 1 and 2; "b" at 1 only. With a 2 s idle timeout, "b" (last data at
    // batch 1) times out at batch 4 (idle since 1: 1 < 4 - 2), "a" at batch 5.
    check(
        words(&["a b", "a", "", "", "", ""]),
        move |_, w| Ok(w.map(|x| (x, 1u64)).map_with_state(spec()).stream().clone()),
        &[
            (1, vec![s("a=1"), s("b=1")]),
            (2, vec![s("a=2")]),
            (3, vec![]),
            (4, vec![s("b timed out at 1")]),
            (5, vec![s("a timed out at 2")]),
            (6, vec![]),
        ],
    );
    check(
        words(&["a b", "a", "", "", "", ""]),
        move |_, w| {
            Ok(w.map(|x| (x, 1u64))
                .map_with_state(spec())
                .state_snapshots())
        },
        &[
            (1, vec![(s("a"), 1), (s("b"), 1)]),
            (2, vec![(s("a"), 2), (s("b"), 1)]),
            (3, vec![(s("a"), 2), (s("b"), 1)]),
            (4, vec![(s("a"), 2)]),
            (5, vec![]),
            (6, vec![]),
        ],
    );
}

#[test]
fn map_with_state_remove_and_initial_state() {
    use engine::{State, StateSpec};
    check(
        vec![vec![(s("x"), 1i64), (s("y"), -1)], vec![(s("x"), 1)]],
        |_, p| {
            let spec = StateSpec::function(|_k: &String, v: Option<i64>, st: &mut State<i64>| {
                let v = v.unwrap_or(0);
                if v < 0 {
                    st.remove();
                } else {
                    st.update(st.get().copied().unwrap_or(0) + v);
                }
                st.get().copied()
            })
            .initial_state(vec![(s("y"), 100), (s("x"), 10)])
            .partitions(2);
            Ok(p.map_with_state(spec).state_snapshots())
        },
        &[(1, vec![(s("x"), 11)]), (2, vec![(s("x"), 12)])],
    );
}
