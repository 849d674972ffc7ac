import { PACKAGE_VERSION } from '../package-root';

/** fc-run's version, from package.json. */
export const VERSION: string = PACKAGE_VERSION;
