// Validates Kubernetes objects (a JSON array in the file named by argv[2]) against the published
// OpenAPI schemas in kubernetes-models (an ES module, so it runs here rather than inside jest).
// Prints one JSON line per object: {"kind", "ok", "error"?}.
import { readFileSync } from 'node:fs';

const objects = JSON.parse(readFileSync(process.argv[2], 'utf8'));
for (const obj of objects) {
  const { [obj.kind]: Model } = await import(`kubernetes-models/v1/${obj.kind}`);
  try {
    new Model(obj).validate();
    console.log(JSON.stringify({ kind: obj.kind, ok: true }));
  } catch (err) {
    console.log(JSON.stringify({ kind: obj.kind, ok: false, error: String(err.message) }));
  }
}
