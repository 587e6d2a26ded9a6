// Records a hash of what the build was made from (src/, style/, package.json) in
// labextension/source-hash.txt; tests/test_extension.py recomputes it to check that the
// committed bundle is not older than its source (rebuild: npm install && npm run build).
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');

function files(dir) {
  return fs.readdirSync(path.join(root, dir), { withFileTypes: true })
    .flatMap(e => (e.isDirectory() ? files(path.join(dir, e.name)) : [path.join(dir, e.name)]));
}

const inputs = [...files('src'), ...files('style'), 'package.json'].map(f => f.split(path.sep).join('/')).sort();
const hash = crypto.createHash('sha256');
for (const f of inputs) {
  hash.update(f + '\0');
  hash.update(fs.readFileSync(path.join(root, f)));
  hash.update('\0');
}
fs.writeFileSync(path.join(root, 'labextension', 'source-hash.txt'), hash.digest('hex') + '\n');
console.log('labextension/source-hash.txt written');
