// Counts the results of the HTTP cache test suite per kind, as cache-tests.fyi shows them
// (dependencies honoured): `node cache-tests-count.mjs <suite dir> <results.json>...`.
// LIST=1 also lists the required tests that did not pass.
import fs from 'fs'
import path from 'path'

const dir = path.resolve(process.argv[2])
const tests = (await import(path.join(dir, 'tests/index.mjs'))).default
// The npm release (0.4.x) has its engine at the top and runs the Surrogate-Control tests too;
// the repository's current layout has it in `test-engine/`, without them.
const engine = fs.existsSync(path.join(dir, 'test-engine'))
const display = engine
  ? await import(path.join(dir, 'test-engine/lib/results.mjs'))
  : await import(path.join(dir, 'lib/display.mjs'))
if (!engine) tests.push((await import(path.join(dir, 'tests/surrogate-control.mjs'))).default)
const names = {
  '✅': 'pass', Y: 'pass', '⛔️': 'fail', '⚠️': 'fail', N: 'fail', '⚪️': 'dependency fail',
  '🔹': 'setup fail', '⁉️': 'harness fail', '↻': 'retry', '-': 'untested'
}
for (const file of process.argv.slice(3)) {
  const results = JSON.parse(fs.readFileSync(file, 'utf8'))
  const counts = {}
  const failures = []
  for (const suite of tests) {
    for (const t of suite.tests) {
      if (t.browser_only) continue
      const kind = t.kind || 'required'
      const symbol = display.determineTestResult(tests, t.id, results)[2]
      const name = names[symbol] || symbol
      counts[kind] ??= { total: 0 }
      counts[kind][name] = (counts[kind][name] || 0) + 1
      counts[kind].total++
      if (kind === 'required' && name !== 'pass') failures.push(`  ${name}: ${t.id}: ${t.name}`)
    }
  }
  console.log(path.basename(file))
  for (const kind of ['required', 'optimal', 'check']) {
    const c = counts[kind]
    const rest = Object.entries(c).filter(([k]) => k !== 'total' && k !== 'pass')
      .map(([k, v]) => `${v} ${k}`).join(', ')
    console.log(`  ${kind}: ${c.pass || 0}/${c.total} pass${rest ? ', ' + rest : ''}`)
  }
  if (process.env.LIST) console.log(failures.join('\n'))
}
