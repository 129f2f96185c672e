// Bundles each notebook widget entry, src/widget/<name>.ts, into one standalone ES module
// ../jupyter_cma/widgets/static/<name>.js (nothing left to resolve at run time: anywidget loads it as is), and the
// extension's stylesheet into <name>.css next to it. `node scripts/build-widgets.mjs [--dev]`.
import { build } from 'esbuild';
import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const entriesDir = join(root, 'src', 'widget');
const outDir = join(root, '..', 'jupyter_cma', 'widgets', 'static');
const dev = process.argv.includes('--dev');

const entries = existsSync(entriesDir)
  ? readdirSync(entriesDir).filter(f => f.endsWith('.ts') && !f.endsWith('.d.ts') && !f.startsWith('_'))
  : [];
rmSync(outDir, { recursive: true, force: true });
mkdirSync(outDir, { recursive: true });

for (const file of entries) {
  const name = file.replace(/\.ts$/, '');
  await build({
    entryPoints: [join(entriesDir, file)],
    outfile: join(outDir, `${name}.js`),
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2020',
    minify: !dev,
    sourcemap: dev ? 'inline' : false,
    legalComments: 'none',
    logLevel: 'warning'
  });
  await build({
    entryPoints: [join(root, 'style', 'base.css')],
    outfile: join(outDir, `${name}.css`),
    bundle: true,
    minify: !dev,
    logLevel: 'warning'
  });
}
console.log(`widgets: ${entries.length} bundle(s) in ${outDir}`);
