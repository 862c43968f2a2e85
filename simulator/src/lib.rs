//! NovaCron's discrete-event simulator (`novacron sim`): the mesh in virtual time, seeded
//! and reproducible, on one machine.
//!
//! A run reads a scenario ([`scenario`]), drives its models over an event queue ([`queue`])
//! in integer virtual time ([`time`]) with one seeded random stream per unit of work
//! ([`rng`]), over a modelled network ([`network`]), and writes what it measured
//! ([`report`]). The same scenario and seed give byte-identical output files.
//!
//! Built so far: the engine and the flat epidemic model ([`epidemic`]) checked against
//! Serf's closed form ([`serf_model`]). docs/simulator.md says what each model is, where its
//! parameters come from, how it is validated, and what is still to come.

pub mod churn;
pub mod epidemic;
pub mod kademlia;
pub mod network;
pub mod overlay;
pub mod owner;
pub mod queue;
pub mod report;
pub mod rng;
pub mod run;
pub mod scenario;
pub mod serf_model;
pub mod stats;
pub mod sweep;
pub mod time;
