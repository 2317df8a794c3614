"""`dsla-serve bench`: a load generator for any OpenAI-compatible endpoint (this project's or another).

    arrivals.py    when requests are sent: Poisson, gamma bursts (a coefficient of variation), a trace file
    workload.py    what is sent: prompts cut from a corpus to a length distribution, output lengths
    client.py      one streamed request, timed (TTFT, TPOT, end to end), its error kind, its depth
    result.py      one request's outcome (`Result`), whoever timed it
    report.py      a run's percentiles, SLO attainment, goodput, errors by kind, mean served depth
    plot.py        SLO attainment and goodput against request rate, as a PNG
    run.py         a run at one rate (bounded in count and time, with a progress bar) and a sweep

Imports neither torch nor Ray: it is a client. The command is `dsla_serve/commands/bench.py`.
"""
