"""carnet side by side with GNU Health (HMIS 5.0, on Tryton), on this machine.

    .venv/bin/python -m benchmarks.gnuhealth [--patients 10000] [--seconds 15] [--rounds 3]
        [--only name,birth]     # some of read,name,birth,create (default: all)

What it does, in one run (never part of `make test`):
1. installs GNU Health from PyPI into its own virtual environment (var/gnuhealth/venv, pinned
   versions below), with gunicorn, unless it is already there;
2. creates two databases on the same PostgreSQL: carnet's (migrated) and GNU Health's
   (`trytond-admin --all -u health`), and writes the same N patients into both (same names,
   birth dates, sex, identifiers, phone and e-mail): carnet's through its encrypted loader,
   GNU Health's through Tryton's ORM (benchmarks/gnuhealth/tryton_side.py, run by GNU Health's
   interpreter);
3. serves both on loopback, with the same server shape: carnet under uvicorn (2 workers),
   GNU Health under gunicorn (2 workers x 4 threads, trytond.application:app);
4. drives both with the same load tool (wrk, one Lua script per case), rounds interleaved
   (carnet, then GNU Health, then carnet ...), and reports per case each system's throughput or
   p50, the ratio, CPU per request (server processes + that database's PostgreSQL backends)
   and the machine's load average.

The cases, each as the product's own API does it:
- full patient read, 16 clients: carnet `GET /fhir/Patient/{id}` (gate, decryption, audit,
  exposure, detection) against GNU Health JSON-RPC `model.gnuhealth.patient.read` of the
  party's identity fields and contacts;
- family name only (exact) + read, 1 client: carnet `GET /fhir/Patient?family=` by a
  physician with 800 patients in care; GNU Health `search_read` on `party.lastname`;
- family + birth date + read, 1 client;
- patient create, 8 clients: carnet `POST /fhir/Patient`; GNU Health `party.party.create`
  then `gnuhealth.patient.create` (what its client does).
GNU Health answers errors inside HTTP 200 JSON-RPC bodies: an answer containing `"error"`
counts as an error. The run exits 1 on any error in either system.
"""
