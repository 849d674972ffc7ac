export { loadSpecFile, loadSpecText } from './validate';
export type { LoadOptions, LoadedSpec } from './validate';
export { SpecInvalidError, pointer } from './issues';
export type { SpecIssue } from './issues';
export type { ResolvedSpec } from './resolved';
export { loadSchema } from './schema';
export { SCHEMA_PATH } from '../package-root';
