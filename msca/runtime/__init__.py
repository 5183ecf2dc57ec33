"""What every rank needs, whatever it trains: `dist` (rendezvous from the scheduler's variables, the process
group, rank-0 logging), `collective` (fail-safe agreed sections), `preemption` (the stop flag), `failure`
(what a failing rank records for the launcher), `precision` (what the devices here can compute), `errors`
(exit codes and which errors are the user's)."""
