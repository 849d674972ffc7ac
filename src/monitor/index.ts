/** Logs and metrics: see {@link ./logger} and {@link ./metrics}. */
export * from './sink';
export {
  ANONYMOUS_INSTANCE,
  createLostCounter,
  DEFAULT_LOG_LEVEL,
  escapeLine,
  LEVEL_TAGS,
  Logger,
  LogLevel,
  parseLogLevel,
} from './logger';
export type { LoggerOptions, SharedLoggerOptions } from './logger';
export * from './metrics';
