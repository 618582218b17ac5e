"""The livepost benchmark: fan-out, request/response and idle-connection measurements over
real WebSockets against livepost, the DCRF baseline, the raw relay or any running deployment.

Run `python -m bench --help`; README.md ("Benchmark") has the commands.
"""
