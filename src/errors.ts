/**
 * Every error fc-run raises on purpose carries a stable code and the exit status the CLI uses.
 * Exit 2 means "your spec is wrong", exit 1 means "something failed while doing what it said".
 */
export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_INVALID_SPEC = 2;

export class FcRunError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly exitCode: number = EXIT_FAILURE,
  ) {
    super(message);
    this.name = new.target.name;
  }
}
